//! The app's caches: opened, and each operation on one carried out (fenced when made under a
//! singleton lease), each on a task of its own so that a slow member holds up no other frame.

use bytes::Bytes;
use immutant_protocol::{CacheOp, CacheOptions, Frame, Header, Open};

use super::{Session, refusal};
use crate::vocabulary::cache::check_reach;

impl Session {
    pub(super) fn open_cache(&self, id: u64, name: String, open: Open, options: CacheOptions) {
        if let Err(refused) = check_reach(&name, &self.deployment.name) {
            return self.send(refusal(id, refused));
        }
        let caches = self.context.engine.caches.clone();
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let header = match caches.open(&name, open, options).await {
                Ok(options) => Header::CacheOpened { id, options },
                Err(error) => refusal(id, error),
            };
            let _ = outbox.send(Frame::new(header).into());
        });
    }

    pub(super) fn cache_call(
        &self,
        id: u64,
        cache: String,
        call: CacheOp,
        epoch: Option<u64>,
        body: Bytes,
    ) {
        if let Err(refused) = check_reach(&cache, &self.deployment.name) {
            return self.send(refusal(id, refused));
        }
        let fence = match self.fenced(epoch) {
            Ok(fence) => fence,
            Err(stale) => return self.send(refusal(id, stale)),
        };
        let caches = self.context.engine.caches.clone();
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let frame = match caches.call(&cache, call, body, fence).await {
                Ok((outcome, value)) => Frame::with_body(Header::CacheReply { id, outcome }, value),
                Err(error) => Frame::new(refusal(id, error)),
            };
            let _ = outbox.send(frame.into());
        });
    }
}
