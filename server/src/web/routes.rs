//! The routing table: which app serves a request, by its host and the longest context path
//! that prefixes its path (the rules are [`immutant_protocol::web`]'s, which apps serving
//! connections of their own follow too).

use std::sync::Arc;

use immutant_protocol::web::{self, AsMounted, Mounted};

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

/// One mounted web app: where it is mounted (read through it: `route.app`, `route.covers(..)`),
/// and where its requests go.
#[derive(Clone)]
pub struct Route {
    pub mounted: Mounted,
    /// Which deployment of the app the route belongs to (see [`super::Mount`]).
    pub serial: u64,
    pub target: Target,
}

impl std::ops::Deref for Route {
    type Target = Mounted;

    fn deref(&self) -> &Mounted {
        &self.mounted
    }
}

impl AsMounted for Route {
    fn mounted(&self) -> &Mounted {
        &self.mounted
    }
}

/// Every mounted web app of this node.
#[derive(Default)]
pub struct Routes {
    /// Shared, so that a request takes its route without copying it.
    routes: Vec<Arc<Route>>,
}

impl Routes {
    /// The routes a request for `host` may take (see [`web::for_host`]).
    pub fn for_host<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Arc<Route>> {
        web::for_host(&self.routes, host)
    }

    /// The route for a request to `host` (lower case, no port) and `path` (see [`web::find`]).
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        web::find(&self.routes, host, path)
    }

    /// Where every app is mounted, as apps serving connections of their own are told.
    pub fn mounted(&self) -> Vec<Mounted> {
        self.all().map(|route| route.mounted.clone()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(app: &str, context_path: &str) -> Route {
        Route {
            mounted: Mounted {
                app: app.to_string(),
                context_path: context_path.to_string(),
                hosts: Vec::new(),
            },
            serial: 1,
            target: Target::Starting,
        }
    }

    #[test]
    fn an_app_mounted_again_replaces_its_route_and_a_clash_is_found() {
        let mut routes = Routes::default();
        routes.insert(route("app", "/old"));
        routes.insert(route("app", "/app"));
        routes.insert(route("other", "/other"));
        assert_eq!(routes.get("app").unwrap().context_path, "/app");
        assert_eq!(routes.find("localhost", "/app/x").unwrap().app, "app");
        assert!(routes.find("localhost", "/old").is_none());
        assert_eq!(routes.clash(&route("third", "/app")).unwrap().app, "app");
        assert!(routes.clash(&route("app", "/app")).is_none());
        routes.remove("app");
        assert_eq!(routes.mounted().len(), 1);
    }
}
