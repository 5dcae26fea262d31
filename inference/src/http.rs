//! The HTTP connection layer under the router: accepting, a cap on open connections, and the
//! timeouts that keep one slow client from holding the box.
//!
//! axum's own `serve` has no timeouts and no connection limit; this serves the same router
//! through hyper's HTTP/1.1 connection with:
//! - **a connection cap**: beyond `max_connections` open connections a new one is answered
//!   `503 overloaded` (if its socket takes the bytes at once) and closed, never queued;
//! - **timeouts** kept by [`Guarded`], a wrapper around each socket that follows the request
//!   cycle: a connection that sends nothing, or a request head that does not arrive whole within
//!   `header_timeout`, is closed; a keep-alive connection with no new request for
//!   `idle_timeout` is closed; a response the client does not read for `body_timeout` is
//!   abandoned. Request bodies are read by the handlers, each under `body_timeout`
//!   (`api::read_body`);
//! - **JSON bodies for hyper's own errors**: hyper answers an unparsable request line or head
//!   (400), a URI too long (414) or too large a head (431) itself, with an empty body. The
//!   wrapper replaces such a response with the `{code, message}` body every other error has.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// Limits on connections, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; more are refused at once.
    pub max_connections: usize,
    /// From connection (or the first byte of a request) to its complete head.
    pub header_timeout: Duration,
    /// A keep-alive connection waits this long for its next request.
    pub idle_timeout: Duration,
    /// A response the client does not take for this long is abandoned.
    pub write_timeout: Duration,
}

/// What a connection refused for the cap is told, if its socket takes it at once.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 74\r\n\r\n\
{\"code\":\"overloaded\",\"message\":\"too many open connections; retry shortly\"}";

/// Accepts connections on `listener` and serves `router` on each until `shutdown` resolves;
/// then stops accepting and waits (at most `grace`) for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors, say: the cap should keep this from happening.
                // Waiting a little lets connections close instead of spinning on the error.
                metrics::counter!("vigil_accept_errors_total").increment(1);
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("vigil_connections_refused_total").increment(1);
            // Best effort and never waiting: a client that cannot take 200 bytes now is
            // simply closed.
            let _ = stream.try_write(REFUSED);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics::gauge!("vigil_connections_open").increment(1.0);
        let io = TokioIo::new(Guarded::new(stream, limits));
        let service = TowerToHyperService::new(router.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            metrics::gauge!("vigil_connections_open").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "open connections did not finish in time; closing them"
        );
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request (`first`: of the connection's first request).
    Idle { first: bool },
    /// Some of a request head has arrived, not all of it.
    Head,
    /// The head is in: the handler reads the body (under its own timeout) and answers.
    Busy,
}

/// A socket that enforces the header, idle and write timeouts, and gives hyper's own error
/// responses a JSON body.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    limits: Limits,
    phase: Phase,
    /// The end of a head is an empty line: true when the last byte seen ended a line.
    line_start: bool,
    read_deadline: Pin<Box<Sleep>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// A replacement for hyper's bodiless error response, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<S> Guarded<S> {
    fn new(inner: S, limits: Limits) -> Guarded<S> {
        Guarded {
            inner,
            limits,
            phase: Phase::Idle { first: true },
            line_start: true,
            read_deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
            write_deadline: None,
            replacement: None,
        }
    }

    /// Follows the request cycle through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head;
            self.line_start = true;
            let deadline = Instant::now() + self.limits.header_timeout;
            self.read_deadline.as_mut().reset(deadline);
        }
        if self.phase == Phase::Head && head_ends(&mut self.line_start, bytes) {
            self.phase = Phase::Busy;
        }
    }

    /// Bytes of a response (beginning with `start`) went out.
    fn wrote(&mut self, start: &[u8]) {
        self.write_deadline = None;
        // An informational response (100 Continue) comes before the body is read; a response
        // still streaming keeps the connection alive with each write.
        let informational = start.starts_with(b"HTTP/1.1 1");
        if (self.phase == Phase::Busy && !informational) || matches!(self.phase, Phase::Idle { .. })
        {
            self.answered();
        }
    }

    /// Follows a write of a response beginning with `start` to the socket: notes it, or
    /// starts the timeout of a client that is not taking it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
        start: &[u8],
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                self.wrote(start);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => self.write_pending(cx),
        }
    }

    /// The client is not taking the response: fails the connection once that has lasted
    /// `write_timeout`.
    fn write_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.limits.write_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            metrics::counter!("vigil_connection_timeouts_total", "phase" => "response not read in time")
                .increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            )));
        }
        Poll::Pending
    }

    /// A response (not an informational one) went out: the connection waits for the next.
    fn answered(&mut self) {
        self.phase = Phase::Idle { first: false };
        let deadline = Instant::now() + self.limits.idle_timeout;
        self.read_deadline.as_mut().reset(deadline);
    }
}

/// Whether `bytes` hold the empty line that ends a request head, given whether the bytes
/// before them ended a line (updated). Accepts CRLF and bare LF line ends, as hyper does.
fn head_ends(line_start: &mut bool, bytes: &[u8]) -> bool {
    for &byte in bytes {
        match byte {
            b'\n' if *line_start => return true,
            b'\n' => *line_start = true,
            b'\r' => {}
            _ => *line_start = false,
        }
    }
    false
}

/// If `bytes` begin hyper's own error response (a 4xx or 5xx head with an empty body: every
/// error the router sends has a JSON body), the status code.
fn automatic_error(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = bytes[..head_end].to_ascii_lowercase();
    let empty = head
        .split(|&b| b == b'\n')
        .any(|line| line.trim_ascii() == b"content-length: 0");
    empty.then_some(status)
}

/// The response that replaces hyper's bodiless one for `status`.
fn json_error(status: u16) -> Vec<u8> {
    let (reason, code, message) = match status {
        414 => (
            "URI Too Long",
            "uri_too_long",
            "the request URI is too long",
        ),
        431 => (
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large or has too many fields",
        ),
        408 => (
            "Request Timeout",
            "request_timeout",
            "the request took too long",
        ),
        400 => (
            "Bad Request",
            "malformed_request",
            "the request is not valid HTTP/1.1",
        ),
        _ => ("Error", "malformed_request", "the request cannot be served"),
    };
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    metrics::counter!("vigil_http_errors_total", "code" => code).increment(1);
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The most bytes of a request head handed to hyper in one read.
const HEAD_READ: usize = 8 * 1024;

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let read = if this.phase == Phase::Busy {
            let before = buf.filled().len();
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            if let Poll::Ready(Ok(())) = read {
                // Split borrows: `saw` needs `this`, the bytes borrow only `buf`.
                this.saw(&buf.filled()[before..]);
            }
            read
        } else {
            // While a head is read, hyper gets at most HEAD_READ bytes at a time: it checks its
            // head-size limit between reads, and one large read (loopback hands over hundreds
            // of kilobytes at once) could carry a whole oversized head past the check.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_READ];
            let n = HEAD_READ.min(buf.remaining());
            let mut small = ReadBuf::uninit(&mut chunk[..n]);
            let read = Pin::new(&mut this.inner).poll_read(cx, &mut small);
            if let Poll::Ready(Ok(())) = read {
                buf.put_slice(small.filled());
                this.saw(small.filled());
            }
            read
        };
        match read {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                // A request being handled has no read deadline: its body is the handler's.
                if this.phase != Phase::Busy && this.read_deadline.as_mut().poll(cx).is_ready() {
                    let what = match this.phase {
                        Phase::Idle { first: false } => "idle keep-alive connection",
                        _ => "request head not received in time",
                    };
                    metrics::counter!("vigil_connection_timeouts_total", "phase" => what)
                        .increment(1);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none() {
            if let Some(status) = automatic_error(buf) {
                this.replacement = Some((json_error(status), 0));
            }
        }
        if let Some((bytes, written)) = &mut this.replacement {
            // hyper closes the connection after its own error response: whatever else it
            // writes is dropped once the replacement is out.
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, written, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper writes a head and its body in one vectored write; its own error response is a
        // head alone. Anything to inspect or replace goes through `poll_write`.
        let first: &[u8] = bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| b);
        if self.replacement.is_some() || automatic_error(first).is_some() {
            return self.poll_write(cx, first);
        }
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_empty_line_across_reads() {
        let mut line_start = true;
        assert!(!head_ends(&mut line_start, b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(head_ends(&mut line_start, b"\n\r\n"));
        let mut line_start = true;
        assert!(head_ends(&mut line_start, b"GET / HTTP/1.1\nHost: x\n\n"));
        let mut line_start = true;
        assert!(!head_ends(
            &mut line_start,
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n"
        ));
    }

    #[test]
    fn only_bodiless_error_heads_are_hypers_own() {
        let hyper =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(automatic_error(hyper), Some(431));
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 45\r\n\r\n{\"code\":\"not_found\"}";
        assert_eq!(automatic_error(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_error(ok), None);
        assert_eq!(automatic_error(b"{\"results\": []}"), None);
    }

    #[test]
    fn the_replacement_is_a_json_error_with_its_length() {
        let bytes = json_error(414);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "uri_too_long");
    }

    #[test]
    fn the_refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "overloaded");
    }
}
