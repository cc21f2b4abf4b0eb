//! Reading and writing frames on a byte stream.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::{Frame, Header};

/// What can be wrong with the bytes on the socket.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("a frame of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("a frame's header length {header} is longer than the frame ({frame} bytes)")]
    BadHeaderLength { header: usize, frame: usize },
    #[error("a frame's header is not valid: {0}")]
    BadHeader(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Frames on a byte stream, refusing any longer than `max_frame` bytes. The headers are the
/// app protocol's unless `H` says otherwise (nodes use the same framing between themselves).
#[derive(Debug)]
pub struct FrameCodec<H = Header> {
    max_frame: usize,
    _header: PhantomData<fn() -> H>,
}

impl<H> FrameCodec<H> {
    /// A codec for frames of at most `max_frame` bytes (headers and bodies together).
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame,
            _header: PhantomData,
        }
    }
}

impl<H: DeserializeOwned> Decoder for FrameCodec<H> {
    type Item = Frame<H>;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<H>>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if size > self.max_frame {
            return Err(ProtocolError::TooLarge {
                size,
                limit: self.max_frame,
            });
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut frame = src.split_to(size);
        if size < 4 {
            return Err(ProtocolError::BadHeaderLength {
                header: 0,
                frame: size,
            });
        }
        let header_len = frame.get_u32() as usize;
        if header_len > frame.len() {
            return Err(ProtocolError::BadHeaderLength {
                header: header_len,
                frame: size,
            });
        }
        let header: H = serde_json::from_slice(&frame[..header_len])?;
        frame.advance(header_len);
        Ok(Some(Frame {
            header,
            body: frame.freeze(),
        }))
    }
}

impl<H: Serialize> Encoder<Frame<H>> for FrameCodec<H> {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame<H>, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let header = serde_json::to_vec(&frame.header)?;
        let size = 4 + header.len() + frame.body.len();
        if size > self.max_frame {
            return Err(ProtocolError::TooLarge {
                size,
                limit: self.max_frame,
            });
        }
        dst.reserve(4 + size);
        dst.put_u32(size as u32);
        dst.put_u32(header.len() as u32);
        dst.put_slice(&header);
        dst.put_slice(&frame.body);
        Ok(())
    }
}

impl<H> Frame<H> {
    /// A frame with no body.
    pub fn new(header: H) -> Self {
        Frame {
            header,
            body: Bytes::new(),
        }
    }

    /// A frame with a body.
    pub fn with_body(header: H, body: Bytes) -> Self {
        Frame { header, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_the_trip_whole_and_in_pieces() {
        let mut codec = FrameCodec::<Header>::new(1024);
        let mut wire = BytesMut::new();
        let frame = Frame::with_body(
            Header::Ack { delivery: 7 },
            Bytes::from_static(b"\x00\xffraw"),
        );
        codec.encode(frame.clone(), &mut wire).unwrap();
        codec
            .encode(Frame::new(Header::Ready {}), &mut wire)
            .unwrap();
        let mut partial = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire {
            partial.put_u8(byte);
            while let Some(frame) = codec.decode(&mut partial).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, [frame, Frame::new(Header::Ready {})]);
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        let mut wire = BytesMut::new();
        wire.put_u32(10_000);
        let error = FrameCodec::<Header>::new(1024)
            .decode(&mut wire)
            .unwrap_err();
        assert!(matches!(
            error,
            ProtocolError::TooLarge {
                size: 10_000,
                limit: 1024
            }
        ));
    }
}
