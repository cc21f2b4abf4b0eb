//! Questions to another member's management over the mesh: each on a sealed link opened for it
//! (answers such as a log's lines must not hold up the standing links' forwards), answered by
//! the member's [`AnswerDesk`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use immutant_protocol::Frame;

use super::cluster::Cluster;
use super::link::{self, LinkHeader};
use crate::vocabulary::questions::{Answer, AskError, MAX_ANSWER};

/// How long a member may take to open the link and answer.
const PATIENCE: Duration = Duration::from_secs(5);

/// Asks the other members' management.
pub struct MemberQuestions {
    cluster: Arc<Cluster>,
}

impl MemberQuestions {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        MemberQuestions { cluster }
    }

    /// The answer of the member `member`'s management to `path`.
    pub async fn ask(&self, member: &str, path: &str) -> Result<Answer, AskError> {
        let address = {
            let view = self.cluster.view();
            let view = view.borrow();
            view.members
                .iter()
                .find(|found| found.name == member && !found.is_self)
                .map(|found| found.gossip_addr)
        };
        let address = address.ok_or_else(|| AskError::NotMember(member.to_string()))?;
        let no_answer = |reason: String| AskError::NoAnswer {
            member: member.to_string(),
            reason,
        };
        let asked = async {
            let limit = MAX_ANSWER + link::HEADER_ROOM;
            let (mut writer, mut reader) = link::dial(&self.cluster, member, address, limit)
                .await
                .map_err(|error| format!("no link: {error}"))?;
            let question = LinkHeader::Question {
                path: path.to_string(),
            };
            writer
                .send(Frame::new(question))
                .await
                .map_err(|error| error.to_string())?;
            match reader.next().await {
                Some(Ok(Frame {
                    header: LinkHeader::Answer { status },
                    body,
                })) => Ok((status, body)),
                Some(Err(error)) => Err(error.to_string()),
                _ => Err("the link closed".to_string()),
            }
        };
        match tokio::time::timeout(PATIENCE, asked).await {
            Ok(answer) => answer.map_err(no_answer),
            Err(_) => Err(no_answer("no answer in time".to_string())),
        }
    }
}
