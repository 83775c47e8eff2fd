//! The image server as a web seed (BEP 19): pieces nobody else has, by ranged GET with the
//! image's own client (TLS, credentials), each checked against the torrent.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::Rng;

use super::state::{Shared, Source};
use crate::image::fetch::{self, FetchError, FetchOptions};

/// One web seed worker (two run: the second only while the node has no peers).
pub(super) async fn web_seed(
    sh: Arc<Shared>,
    c: reqwest::Client,
    urls: Vec<String>,
    o: FetchOptions,
    worker: u32,
) {
    // Nodes that start together learn of each other before most go to the server.
    let jitter = rand::thread_rng().gen_range(0..400);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    loop {
        let notified = sh.changed.notified();
        let (fatal, alone) = {
            let s = sh.lock();
            (s.fatal.is_some(), s.alone(sh.window))
        };
        if fatal {
            return;
        }
        // A second request to the server keeps a lone node's link full (the gap between two
        // pieces of one request is the link idle); with peers, one per node is the node's
        // share of the server, and fewer requests at once means fewer pieces two nodes fetch
        // from it at the same time.
        let pick = if worker == 0 || alone {
            sh.pick_for_origin()
        } else {
            None
        };
        let Some(i) = pick else {
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
            continue;
        };
        match origin_piece(&sh, &c, &urls, &o, i).await {
            Ok(data) => sh.complete(i, data, Source::Origin),
            Err(e) => {
                sh.unclaim(i);
                sh.fail(e);
                return;
            }
        }
    }
}

async fn origin_piece(
    sh: &Shared,
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    i: u32,
) -> Result<Bytes, FetchError> {
    let (start, end) = sh.t.piece_range(i);
    let mut last = String::new();
    for attempt in 0..=o.retries {
        if attempt > 0 {
            tokio::time::sleep(o.retry_interval).await;
        }
        let mut body = match fetch::open_range(c, urls, o, start, end).await {
            Ok(b) => b,
            // A range answered from the wrong byte: one piece asked again, not the image.
            Err(FetchError::Restart(why)) => {
                last = why;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(total) = body.total {
            if total != sh.t.length {
                return Err(FetchError::Refused {
                    url: crate::redact::url(&urls[0]).into_owned(),
                    why: format!(
                        "the torrent describes a {}-byte image, the server's is {total} bytes: the torrent is for another image",
                        sh.t.length
                    ),
                });
            }
        }
        if body.start != start {
            return Err(FetchError::Refused {
                url: crate::redact::url(&urls[0]).into_owned(),
                why: "the image server ignores Range requests, so it cannot be a web seed".into(),
            });
        }
        let want = (end - start) as usize;
        let mut buf = BytesMut::with_capacity(want);
        let mut broke = None;
        while buf.len() < want {
            match body.resp.chunk().await {
                Ok(Some(b)) => {
                    let room = want - buf.len();
                    buf.extend_from_slice(&b[..b.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    broke = Some(crate::conductor::client::error_chain(&e));
                    break;
                }
            }
        }
        if buf.len() == want {
            let data = buf.freeze();
            if !sh.t.check_piece(i, &data) {
                return Err(FetchError::Refused {
                    url: crate::redact::url(&urls[0]).into_owned(),
                    why: format!(
                        "piece {i} from the image server does not match the torrent: the torrent is for another image"
                    ),
                });
            }
            return Ok(data);
        }
        last = broke.unwrap_or_else(|| format!("piece {i}: body ended early"));
        tracing::warn!(piece = i, error = %last, "web seed: piece interrupted, retrying");
    }
    Err(FetchError::Exhausted {
        attempts: o.retries + 1,
        last,
    })
}
