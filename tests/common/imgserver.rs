//! A fault-injecting image server on 127.0.0.1 for pipeline tests: serves in-memory files with
//! ETag/Last-Modified and Range/If-Range, and can refuse ranges, cut the connection at given
//! offsets, stall, answer scripted statuses, or change an object between requests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Default)]
pub struct Faults {
    /// Ignore Range headers (always 200 with the whole object).
    pub no_range: bool,
    /// Absolute object offsets at which to cut the connection, each once.
    pub drop_at: VecDeque<u64>,
    /// Statuses to answer instead of the object, in order (e.g. 503, 503).
    pub statuses: VecDeque<u16>,
    /// Stall this long once when reaching this offset.
    pub stall: Option<(u64, Duration)>,
    /// Change the ETag (as a rebuilt object would) after this many requests.
    pub change_etag_after: Option<usize>,
    /// Omit Content-Length (chunked transfer).
    pub chunked: bool,
    /// Answer bounded range requests (`bytes=a-b`) with this byte of the object flipped: a
    /// server that lies about metadata read out of band.
    pub tamper_ranges_at: Option<u64>,
    /// At this request number, the object is rebuilt: new content and a new ETag.
    pub swap_after: Option<(usize, Arc<Vec<u8>>)>,
    /// End the body cleanly at this object offset (a truncated object: with Content-Length
    /// the connection then breaks short of it; chunked, the transfer just ends).
    pub end_early_at: Option<u64>,
    /// Declare this many bytes more (or fewer) than the body has.
    pub content_length_delta: i64,
    /// The server's link, in bytes per second, shared by all its answers (a fleet's image
    /// server, the bottleneck of a rack deploying at once).
    pub link_rate: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    pub files: HashMap<String, Arc<Vec<u8>>>,
    pub etag_gen: u32,
    pub faults: Faults,
    pub seen: Vec<Seen>,
    pub sent_bytes: u64,
    /// When the rate-limited link is next free.
    pub link_free_at: Option<tokio::time::Instant>,
}

pub struct ImageServer {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

/// Streams `data[from..]`, cutting or stalling where the faults say.
struct FaultBody {
    /// The object, shared without copying (the server must not be what limits a write's speed).
    data: Bytes,
    pos: usize,
    end: usize,
    cut_at: Option<usize>,
    stall: Option<(usize, Duration)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<Mutex<State>>,
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        if let Some((at, d)) = self.stall {
            if self.pos >= at {
                self.stall = None;
                self.sleep = Some(Box::pin(tokio::time::sleep(d)));
                return self.poll_frame(cx);
            }
        }
        if self.cut_at.is_some_and(|c| self.pos >= c) {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected cut",
            ))));
        }
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        let rate = self.state.lock().unwrap().faults.link_rate;
        let step = if rate.is_some() {
            16 * 1024
        } else {
            256 * 1024
        };
        let mut end = (self.pos + step).min(self.end);
        if let Some(c) = self.cut_at {
            end = end.min(c);
        }
        if let Some((at, _)) = self.stall {
            if at > self.pos {
                end = end.min(at);
            }
        }
        let chunk = self.data.slice(self.pos..end);
        let state = self.state.clone();
        let mut st = state.lock().unwrap();
        st.sent_bytes += chunk.len() as u64;
        if let Some(r) = rate {
            // Reserve the link for this chunk; the next one waits until it is through.
            let now = tokio::time::Instant::now();
            let from = st.link_free_at.map_or(now, |f| f.max(now));
            let free = from + Duration::from_secs_f64(chunk.len() as f64 / r as f64);
            st.link_free_at = Some(free);
            self.sleep = Some(Box::pin(tokio::time::sleep_until(free)));
        }
        drop(st);
        self.pos = end;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

use std::future::Future;

impl ImageServer {
    pub fn start() -> ImageServer {
        Self::start_with(false)
    }

    /// A server whose thread runs at nice 10: it stands for a remote server in tests that
    /// measure the agent's answer times from clients on the same CPU, which it must not delay.
    pub fn start_low_priority() -> ImageServer {
        Self::start_with(true)
    }

    fn start_with(low_priority: bool) -> ImageServer {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(1).enable_all();
        if low_priority {
            rt.on_thread_start(
                || std::mem::forget(rivet::system::priority::lower_current_thread()),
            );
        }
        let rt = rt.build().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let st = state.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(serve(req, st)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        ImageServer {
            url,
            state,
            _rt: rt,
        }
    }

    pub fn add(&self, name: &str, data: Vec<u8>) -> String {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(format!("/{name}"), Arc::new(data));
        format!("{}/{name}", self.url)
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn sent_bytes(&self) -> u64 {
        self.state.lock().unwrap().sent_bytes
    }
}

/// An object as `Bytes` without a copy.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

type Resp = Response<http_body_util::Either<FaultBody, http_body_util::Full<Bytes>>>;

fn serve(req: Request<hyper::body::Incoming>, st: Arc<Mutex<State>>) -> Resp {
    use http_body_util::{Either, Full};
    let hdr = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (range, if_range) = (hdr("range"), hdr("if-range"));
    let path = req.uri().path().to_string();
    let mut s = st.lock().unwrap();
    let n_req = s.seen.len();
    if s.faults.change_etag_after == Some(n_req) {
        s.etag_gen += 1;
    }
    if s.faults
        .swap_after
        .as_ref()
        .is_some_and(|(n, _)| *n == n_req)
    {
        if let Some((_, new)) = s.faults.swap_after.take() {
            s.files.insert(path.clone(), new);
            s.etag_gen += 1;
        }
    }
    let etag = format!("\"v{}\"", s.etag_gen);
    let simple = |code: u16| {
        Response::builder()
            .status(code)
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap()
    };
    let record = |status: u16, s: &mut State| {
        s.seen.push(Seen {
            path: path.clone(),
            range: range.clone(),
            if_range: if_range.clone(),
            status,
        });
    };
    if let Some(code) = s.faults.statuses.pop_front() {
        record(code, &mut s);
        return simple(code);
    }
    let Some(data) = s.files.get(&path).cloned() else {
        record(404, &mut s);
        return simple(404);
    };
    let mut start = 0usize;
    let mut end = data.len();
    let mut status = 200;
    let mut data = data;
    if let (Some(r), false) = (&range, s.faults.no_range) {
        let validator_ok = if_range.as_deref().is_none_or(|v| v == etag);
        if validator_ok {
            if let Some((from, to)) = r.strip_prefix("bytes=").and_then(|x| x.split_once('-')) {
                if let Ok(from) = from.parse::<usize>() {
                    start = from.min(data.len());
                    status = 206;
                    if let Ok(to) = to.parse::<usize>() {
                        end = (to + 1).clamp(start, data.len());
                        if let Some(t) = s.faults.tamper_ranges_at {
                            let mut v = data.to_vec();
                            if let Some(b) = v.get_mut(t as usize) {
                                *b ^= 0x01;
                            }
                            data = Arc::new(v);
                        }
                    }
                }
            }
        }
    }
    let cut_at = s
        .faults
        .drop_at
        .front()
        .copied()
        .filter(|c| *c as usize >= start && (*c as usize) < end)
        .map(|c| c as usize);
    if cut_at.is_some() {
        s.faults.drop_at.pop_front();
    }
    let stall = s.faults.stall.take().map(|(at, d)| (at as usize, d));
    record(status, &mut s);
    let chunked = s.faults.chunked;
    let body_end = s
        .faults
        .end_early_at
        .map_or(end, |e| (e as usize).clamp(start, end));
    let delta = s.faults.content_length_delta;
    drop(s);
    let mut b = Response::builder()
        .status(status)
        .header("ETag", etag)
        .header("Last-Modified", "Mon, 23 Nov 2026 10:00:00 GMT")
        .header("Accept-Ranges", "bytes");
    if !chunked {
        let declared = ((end - start) as i64 + delta).max(0);
        b = b.header("Content-Length", declared.to_string());
    }
    if status == 206 {
        b = b.header(
            "Content-Range",
            format!("bytes {start}-{}/{}", end.saturating_sub(1), data.len()),
        );
    }
    b.body(Either::Left(FaultBody {
        data: Bytes::from_owner(Shared(data)),
        pos: start,
        end: body_end,
        cut_at,
        stall,
        sleep: None,
        state: st.clone(),
    }))
    .unwrap()
}
