//! What goes upstream as a request body ([`RequestBody`]): the client's body, a copy of it
//! teed to mirrors, a recording kept for retries ([`Replayable`]), or nothing; and the errors
//! that tell a client's failure from an endpoint's. The body going back to the client is in
//! [`respond`](super::respond).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

use super::timeout::IdleTimer;

/// Error type of proxy bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a streaming body was cut short.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0} expired while the response body was streaming")]
    Timeout(&'static str),
    #[error("upstream body failed: {0}")]
    Upstream(#[source] BoxError),
    #[error("request body was cut short; mirror copy abandoned")]
    MirrorAbandoned,
    #[error("endpoint sent nothing for {0:?} while the response body was streaming")]
    UpstreamIdle(std::time::Duration),
}

/// The client sent no byte of its request body for the client body timeout. Found in the
/// error hyper's client reports for the exchange like [`ClientBodyError`].
#[derive(Debug, thiserror::Error)]
#[error("client sent no request body byte for {0:?}")]
pub struct ClientBodyTimeout(pub std::time::Duration);

/// Whether `err` or one of its sources is a `T`.
pub fn has_source<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<T>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Reading the client's request body failed: malformed framing (a chunk size that overflows,
/// a bare LF), a reset or a disconnect. Marks the failure as the client's in the error that
/// hyper's client reports for the exchange ([`ClientBodyError::find`]).
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

impl ClientBodyError {
    /// Whether `err` or one of its sources is a [`ClientBodyError`].
    pub fn find(err: &(dyn std::error::Error + 'static)) -> bool {
        has_source::<ClientBodyError>(err)
    }
}

fn client_body_error(e: hyper::Error) -> BoxError {
    Box::new(ClientBodyError(e))
}

/// A body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Incoming(Incoming),
    /// The client's body, with every data frame also offered to mirror copies. A mirror that
    /// cannot keep up is dropped rather than slowing the primary request.
    Tee {
        inner: Incoming,
        mirrors: Vec<(mpsc::Sender<Bytes>, Arc<AtomicBool>)>,
    },
    /// A mirror's copy; `complete` is set once the original ended cleanly, so a copy of a body
    /// that was cut short ends in an error instead of looking complete.
    Mirror {
        rx: mpsc::Receiver<Bytes>,
        complete: Arc<AtomicBool>,
    },
    /// A body whose client-side failure is also recorded in `client_failed` (one of the
    /// `CLIENT_*` values): hyper's h2 client turns a body that fails into a reset stream and
    /// drops the cause.
    Watched {
        inner: Box<RequestBody>,
        client_failed: Arc<AtomicU8>,
    },
    /// The client's body under the client body timeout.
    Timed {
        inner: Box<RequestBody>,
        idle: IdleTimer,
    },
    /// A whole body kept for replay by retries ([`Replayable`]): the same bytes on every
    /// attempt, cloned by reference count.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    /// The client's body on its way to the first attempt of a rule that retries, recorded
    /// for the next ones ([`Replayable`]).
    Recording {
        inner: Box<RequestBody>,
        tape: Arc<std::sync::Mutex<Tape>>,
    },
}

/// A request body as the retry path holds it. The first attempt streams the client's body as
/// it arrives (nothing waits for the whole body, so a client that waits for the response
/// before it finishes sending is never stuck) while a [`Tape`] keeps a copy of up to
/// [`MAX_REPLAY_BODY`](crate::table::retry::MAX_REPLAY_BODY) bytes. A retry can resend the
/// body only once the tape holds all of it.
#[derive(Debug)]
pub enum Replayable {
    /// No body: every attempt sends none.
    Empty,
    /// Recorded while the first attempt streams it.
    Recorded(Arc<std::sync::Mutex<Tape>>),
    /// Announced larger than the limit: sent once, never recorded.
    Once,
}

/// What a [`RequestBody::Recording`] saw of the client's body.
#[derive(Debug, Default)]
pub struct Tape {
    data: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
    len: usize,
    limit: usize,
    /// The body ended cleanly and every byte is on the tape.
    complete: bool,
    /// Over the limit (or failed): the tape is useless.
    spoiled: bool,
}

impl Tape {
    fn record(&mut self, frame: &Frame<Bytes>) {
        if self.spoiled {
            return;
        }
        if let Some(d) = frame.data_ref() {
            self.len += d.len();
            if self.len > self.limit {
                self.spoiled = true;
                self.data = Vec::new();
            } else if !d.is_empty() {
                self.data.push(d.clone());
            }
        } else if let Some(t) = frame.trailers_ref() {
            self.trailers = Some(t.clone());
        }
    }
}

impl Replayable {
    /// The body for the first attempt, and what keeps it for retries.
    pub fn record(body: RequestBody, limit: usize) -> (RequestBody, Replayable) {
        if matches!(body, RequestBody::Empty) || body.is_end_stream() {
            return (RequestBody::Empty, Replayable::Empty);
        }
        if body.size_hint().lower() > limit as u64 {
            return (body, Replayable::Once);
        }
        let tape = Arc::new(std::sync::Mutex::new(Tape {
            limit,
            ..Tape::default()
        }));
        let recording = RequestBody::Recording {
            inner: Box::new(body),
            tape: tape.clone(),
        };
        (recording, Replayable::Recorded(tape))
    }

    /// The body for a retry; `None` when the body cannot be sent again (too large, or not
    /// all of it was read by the attempt before).
    pub fn for_retry(&self) -> Option<RequestBody> {
        match self {
            Replayable::Empty => Some(RequestBody::Empty),
            Replayable::Once => None,
            Replayable::Recorded(tape) => {
                let t = tape.lock().unwrap_or_else(|e| e.into_inner());
                if !t.complete || t.spoiled {
                    return None;
                }
                let data = match t.data.len() {
                    0 => None,
                    1 => Some(t.data[0].clone()),
                    _ => Some(Bytes::from(t.data.concat())),
                };
                Some(RequestBody::Buffered {
                    data,
                    trailers: t.trailers.clone(),
                })
            }
        }
    }

    /// Whether a retry could be sent the whole body now.
    pub fn replayable(&self) -> bool {
        match self {
            Replayable::Empty => true,
            Replayable::Once => false,
            Replayable::Recorded(tape) => {
                let t = tape.lock().unwrap_or_else(|e| e.into_inner());
                t.complete && !t.spoiled
            }
        }
    }
}

/// Values of [`RequestBody::Watched`]'s `client_failed`.
pub const CLIENT_OK: u8 = 0;
pub const CLIENT_FAILED: u8 = 1;
pub const CLIENT_TIMED_OUT: u8 = 2;

impl RequestBody {
    /// A new mirror copy fed by this body. Turns `Incoming` into `Tee`.
    pub fn tee(&mut self) -> RequestBody {
        let (tx, rx) = mpsc::channel(32);
        let complete = Arc::new(AtomicBool::new(false));
        let copy = RequestBody::Mirror {
            rx,
            complete: complete.clone(),
        };
        match std::mem::replace(self, RequestBody::Empty) {
            RequestBody::Incoming(inner) => {
                *self = RequestBody::Tee {
                    inner,
                    mirrors: vec![(tx, complete)],
                };
            }
            RequestBody::Tee { inner, mut mirrors } => {
                mirrors.push((tx, complete));
                *self = RequestBody::Tee { inner, mirrors };
            }
            other => {
                *self = other;
                return RequestBody::Empty;
            }
        }
        copy
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(client_body_error),
            RequestBody::Tee { inner, mirrors } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            mirrors.retain(|(tx, _)| tx.try_send(data.clone()).is_ok());
                        }
                    }
                    None => {
                        for (_, complete) in mirrors.drain(..) {
                            complete.store(true, Ordering::Release);
                        }
                    }
                    Some(Err(_)) => mirrors.clear(),
                }
                Poll::Ready(frame.map(|r| r.map_err(client_body_error)))
            }
            RequestBody::Mirror { rx, complete } => match ready!(rx.poll_recv(cx)) {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if complete.load(Ordering::Acquire) => Poll::Ready(None),
                None => Poll::Ready(Some(Err(StreamError::MirrorAbandoned.into()))),
            },
            RequestBody::Watched {
                inner,
                client_failed,
            } => {
                let frame = ready!(Pin::new(&mut **inner).poll_frame(cx));
                if let Some(Err(e)) = &frame {
                    if has_source::<ClientBodyTimeout>(&**e) {
                        client_failed.store(CLIENT_TIMED_OUT, Ordering::Release);
                    } else if ClientBodyError::find(&**e) {
                        client_failed.store(CLIENT_FAILED, Ordering::Release);
                    }
                }
                Poll::Ready(frame)
            }
            RequestBody::Timed { inner, idle } => match Pin::new(&mut **inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    idle.progressed();
                    Poll::Ready(frame)
                }
                Poll::Pending if idle.expired(cx) => {
                    Poll::Ready(Some(Err(ClientBodyTimeout(idle.limit()).into())))
                }
                Poll::Pending => Poll::Pending,
            },
            RequestBody::Buffered { data, trailers } => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            RequestBody::Recording { inner, tape } => {
                let frame = ready!(Pin::new(&mut **inner).poll_frame(cx));
                let mut t = tape.lock().unwrap_or_else(|e| e.into_inner());
                match &frame {
                    Some(Ok(f)) => {
                        t.record(f);
                        // Readers stop at `is_end_stream` without polling for the end.
                        if inner.is_end_stream() {
                            t.complete = true;
                        }
                    }
                    Some(Err(_)) => t.spoiled = true,
                    None => t.complete = true,
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Tee { inner, .. } => inner.is_end_stream(),
            RequestBody::Mirror { .. } => false,
            RequestBody::Watched { inner, .. } => inner.is_end_stream(),
            RequestBody::Timed { inner, .. } => inner.is_end_stream(),
            RequestBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Recording { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Tee { inner, .. } => inner.size_hint(),
            RequestBody::Mirror { .. } => SizeHint::default(),
            RequestBody::Watched { inner, .. } => inner.size_hint(),
            RequestBody::Timed { inner, .. } => inner.size_hint(),
            RequestBody::Buffered { data, trailers } => match (data, trailers) {
                (Some(d), None) => SizeHint::with_exact(d.len() as u64),
                (None, None) => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            RequestBody::Recording { inner, .. } => inner.size_hint(),
        }
    }
}
