//! Writing frames to a socket from many tasks: each sends into an [`Outbox`]; one writer task
//! writes them in order, flushing only when none are waiting, so frames sent together (many
//! publishes, many deliveries) leave in one write.

use futures_util::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedWrite};

use crate::{Frame, Header, ProtocolError};

/// What the writer takes: a frame, or a request to say when everything before it is written.
pub enum Outgoing<H = Header> {
    Frame(Frame<H>),
    Flush(oneshot::Sender<()>),
}

impl<H> From<Frame<H>> for Outgoing<H> {
    fn from(frame: Frame<H>) -> Self {
        Outgoing::Frame(frame)
    }
}

/// Where frames for one peer go.
pub type Outbox<H = Header> = mpsc::UnboundedSender<Outgoing<H>>;

/// Writes what arrives on `outgoing` until every [`Outbox`] is dropped or the socket fails.
/// `E` is the frames' encoding on the wire: [`crate::FrameCodec`], or one that wraps it.
pub async fn write_frames<W, H, E>(
    mut writer: FramedWrite<W, E>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing<H>>,
) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    E: Encoder<Frame<H>, Error = ProtocolError>,
{
    let mut next = outgoing.recv().await;
    while let Some(item) = next {
        match item {
            Outgoing::Frame(frame) => writer.feed(frame).await?,
            Outgoing::Flush(flushed) => {
                writer.flush().await?;
                let _ = flushed.send(());
            }
        }
        next = match outgoing.try_recv() {
            Ok(item) => Some(item),
            Err(_) => {
                writer.flush().await?;
                outgoing.recv().await
            }
        };
    }
    Ok(())
}
