//! The routing table: which app serves a request, by its host and the longest context path
//! that prefixes its path.

use std::sync::Arc;

use super::backend::Backend;

/// Where a mounted app's requests go now.
#[derive(Clone)]
pub enum Target {
    /// The app mounted a handler and is still setting itself up.
    Starting,
    /// Its process serves requests.
    Up(Arc<Backend>),
    /// Its process is not there; the text says why, for the 503 page.
    Down(String),
}

/// One mounted web app.
#[derive(Clone)]
pub struct Route {
    pub app: String,
    /// Which deployment of the app the route belongs to (see [`super::Mount`]).
    pub serial: u64,
    /// `/` or `/name`, never with a slash at the end.
    pub context_path: String,
    /// The virtual hosts it answers (lower case, no port); none: every host.
    pub hosts: Vec<String>,
    pub target: Target,
}

impl Route {
    /// Whether `path` is under this route's context path (whole segments only: `/app`
    /// covers `/app` and `/app/x`, not `/apple`).
    fn covers(&self, path: &str) -> bool {
        self.context_path == "/"
            || path
                .strip_prefix(&self.context_path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// `path` as the app sees it: the context path taken off, never empty.
    pub fn relative<'p>(&self, path: &'p str) -> &'p str {
        if self.context_path == "/" {
            return path;
        }
        match path.strip_prefix(&self.context_path) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }

    /// The context path and its hosts, as pages show them.
    pub fn describe(&self) -> String {
        match self.hosts.is_empty() {
            true => self.context_path.clone(),
            false => format!("{} (on {})", self.context_path, self.hosts.join(", ")),
        }
    }
}

/// Every mounted web app of this node.
#[derive(Default)]
pub struct Routes {
    /// Shared, so that a request takes its route without copying it.
    routes: Vec<Arc<Route>>,
}

impl Routes {
    /// The routes a request for `host` may take: those of apps on that virtual host, or if no
    /// app names it, those of apps on every host (JBoss's default host).
    pub fn for_host<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Arc<Route>> {
        let named = self
            .routes
            .iter()
            .any(|route| route.hosts.iter().any(|h| h == host));
        self.routes.iter().filter(move |route| match named {
            true => route.hosts.iter().any(|h| h == host),
            false => route.hosts.is_empty(),
        })
    }

    /// The route for a request to `host` (lower case, no port) and `path`: the longest
    /// context path that covers the path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.for_host(host)
            .filter(|route| route.covers(path))
            // The longest context path; of two alike, the name that sorts first.
            .max_by(|a, b| {
                let longer = a.context_path.len().cmp(&b.context_path.len());
                longer.then_with(|| b.app.cmp(&a.app))
            })
    }

    /// Every route.
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|route| &**route)
    }

    /// The route of `app`, if it is mounted.
    pub fn get(&self, app: &str) -> Option<&Route> {
        self.all().find(|route| route.app == app)
    }

    /// The route of `app`, to change, if it is mounted.
    pub fn get_mut(&mut self, app: &str) -> Option<&mut Route> {
        let route = self.routes.iter_mut().find(|route| route.app == app)?;
        Some(Arc::make_mut(route))
    }

    /// Mounts `route`, replacing the app's route if it had one.
    pub fn insert(&mut self, route: Route) {
        self.remove(&route.app);
        self.routes.push(Arc::new(route));
    }

    /// Unmounts `app`.
    pub fn remove(&mut self, app: &str) {
        self.routes.retain(|route| route.app != app);
    }

    /// Another app mounted at the same context path and hosts as `route`, if any.
    pub fn clash(&self, route: &Route) -> Option<&Route> {
        self.all().find(|other| {
            other.app != route.app
                && other.context_path == route.context_path
                && other.hosts == route.hosts
        })
    }
}

/// A context path as a route keeps it: with a slash in front and none at the end.
pub fn normalize_context_path(path: &str) -> String {
    let trimmed = path.trim().trim_matches('/');
    format!("/{trimmed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(app: &str, context_path: &str, hosts: &[&str]) -> Route {
        Route {
            app: app.to_string(),
            serial: 1,
            context_path: context_path.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            target: Target::Starting,
        }
    }

    fn routes(list: &[Route]) -> Routes {
        let mut routes = Routes::default();
        for r in list {
            routes.insert(r.clone());
        }
        routes
    }

    #[test]
    fn the_longest_context_path_that_covers_whole_segments_wins() {
        let routes = routes(&[
            route("root", "/", &[]),
            route("app", "/app", &[]),
            route("deep", "/app/deep", &[]),
        ]);
        let app = |path| routes.find("localhost", path).map(|r| r.app.as_str());
        assert_eq!(app("/app"), Some("app"));
        assert_eq!(app("/app/x"), Some("app"));
        assert_eq!(app("/app/deep/x"), Some("deep"));
        assert_eq!(app("/apple"), Some("root"));
        assert_eq!(app("/"), Some("root"));
    }

    #[test]
    fn a_virtual_host_sees_only_its_apps_and_others_see_the_rest() {
        let routes = routes(&[
            route("any", "/", &[]),
            route("shop", "/", &["shop.example"]),
        ]);
        assert_eq!(routes.find("shop.example", "/x").unwrap().app, "shop");
        assert_eq!(routes.find("localhost", "/x").unwrap().app, "any");
    }

    #[test]
    fn of_two_apps_at_one_context_the_name_that_sorts_first_wins() {
        let routes = routes(&[route("zeta", "/x", &[]), route("alpha", "/x", &[])]);
        assert_eq!(routes.find("localhost", "/x").unwrap().app, "alpha");
    }

    #[test]
    fn nothing_covers_a_path_outside_every_context() {
        let routes = routes(&[route("app", "/app", &[])]);
        assert!(routes.find("localhost", "/other").is_none());
    }

    #[test]
    fn paths_are_relative_to_the_context() {
        let app = route("app", "/app", &[]);
        assert_eq!(app.relative("/app"), "/");
        assert_eq!(app.relative("/app/a/b"), "/a/b");
        assert_eq!(route("root", "/", &[]).relative("/a"), "/a");
    }

    #[test]
    fn context_paths_are_normalized() {
        assert_eq!(normalize_context_path("app/"), "/app");
        assert_eq!(normalize_context_path("/"), "/");
        assert_eq!(normalize_context_path(""), "/");
        assert_eq!(normalize_context_path("/a/b/"), "/a/b");
    }
}
