//! The other members' management, through this node: `GET /members/{member}/{question}` asks
//! the member `member` one of the read-only [`QUESTIONS`] over the cluster's own channels (a
//! sealed link, or NATS), and answers what it answers. So `cargo immutant status` and the
//! console through any install see every member, wherever its management API is bound, and
//! with no token of its: members already trust each other with the cluster's secret. A member
//! answers with its own read-only routes ([`answerer`]), never with one that changes anything.
//! A member's log is asked for with this node's management token only.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::NodeInfo;
use crate::vocabulary::questions::{Answer, Answerer, MAX_ANSWER};

/// What one member may ask another: the read-only routes.
pub const QUESTIONS: &[&str] = &[
    "status",
    "deployments",
    "queues",
    "daemons",
    "caches",
    "jobs",
    "web",
    "log",
];

/// Answers questions with `readable`, the node's read-only routes, in-process.
pub fn answerer(readable: Router) -> Answerer {
    Arc::new(move |path: String| {
        let readable = readable.clone();
        Box::pin(async move { answer(readable, &path).await })
    })
}

/// `readable`'s answer to `GET path` (a question's path and query).
async fn answer(readable: Router, path: &str) -> Answer {
    let asked = question_of(path).is_some();
    let request = axum::http::Request::get(path).body(Body::empty());
    let (true, Ok(request)) = (asked, request) else {
        return (
            404,
            Bytes::from(format!("{path} is not a question a member answers")),
        );
    };
    let Ok(response) = readable.oneshot(request).await;
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            match body.len() > MAX_ANSWER {
                true => (507, Bytes::from_static(b"the answer is too large to relay")),
                false => (status, body),
            }
        }
        Err(error) => (500, Bytes::from(error.to_string())),
    }
}

/// The question a path asks (`/status?history=true` asks `status`), if it is one.
fn question_of(path: &str) -> Option<&str> {
    let name = path.strip_prefix('/')?.split('?').next()?;
    QUESTIONS.contains(&name).then_some(name)
}

/// `GET /members/{member}/{question}`: the member's answer, or why there is none.
pub async fn ask(
    State(info): State<Arc<NodeInfo>>,
    Path((member, question)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // Exactly a question's name (a `?` decoded from `%3F` would carry a query past the checks).
    if !QUESTIONS.contains(&question.as_str()) {
        let asked = QUESTIONS.join(", ");
        return (
            StatusCode::NOT_FOUND,
            format!("a member can be asked {asked}, not {question}\n"),
        )
            .into_response();
    }
    // A member's log holds what its apps print: asked for with this node's token only.
    if question == "log" && !info.token.admits(&headers) {
        return (StatusCode::UNAUTHORIZED, info.token_needed()).into_response();
    }
    let path = match query {
        Some(query) => format!("/{question}?{query}"),
        None => format!("/{question}"),
    };
    let answered = match &info.engine.questions {
        _ if member == info.config.node_name => Ok(info.engine.answers.answer(path).await),
        Some(questions) => questions.ask(&member, &path).await,
        None => {
            return (
                StatusCode::NOT_FOUND,
                format!("this node is standalone: it has no member called {member}\n"),
            )
                .into_response();
        }
    };
    match answered {
        Ok((status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let kind = match status.is_success() {
                true => "application/json",
                false => "text/plain; charset=utf-8",
            };
            (status, [(header::CONTENT_TYPE, kind)], body).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_routes_are_questions() {
        assert_eq!(question_of("/status?history=true"), Some("status"));
        assert_eq!(question_of("/deployments"), Some("deployments"));
        for path in [
            "/deployments/app/undeploy",
            "/web/stop",
            "/metrics",
            "status",
            "/members/x/status",
        ] {
            assert_eq!(question_of(path), None, "{path}");
        }
    }
}
