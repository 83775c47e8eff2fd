//! Scattered byte ranges of an image (qcow2 metadata), read before the image is streamed.
//! Ranges close together share one request. A server that ignores `Range` answers with the
//! whole object from byte 0: that one answer is then read up to the last range needed, for all
//! remaining ranges at once, and dropped there, so memory stays bounded either way.

use super::fetch::{self, FetchError, FetchOptions};

/// Ranges closer than this are fetched in one request (reading the gap is cheaper than a
/// round trip).
const GAP: u64 = 1 << 20;

/// Read `regions` (`(offset, len)`, sorted by offset) and hand each to `on` as it completes,
/// shorter than asked only where the object ends. Returns the object's size when known.
pub async fn read_regions<E, F>(
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    regions: &[(u64, u64)],
    mut on: F,
) -> Result<Option<u64>, E>
where
    E: From<FetchError>,
    F: FnMut(usize, Vec<u8>) -> Result<(), E>,
{
    let mut done = vec![false; regions.len()];
    let mut total = None;
    let mut failures = 0u32;
    let mut no_range = false;
    let mut i = 0;
    while i < regions.len() {
        if done[i] {
            i += 1;
            continue;
        }
        let start = regions[i].0;
        let mut end = start + regions[i].1;
        let mut j = i + 1;
        while j < regions.len() && (no_range || regions[j].0 <= end + GAP) {
            end = end.max(regions[j].0 + regions[j].1);
            j += 1;
        }
        let body = fetch::open_range(c, urls, o, start, end.max(start + 1)).await?;
        total = total.or(body.total);
        if body.start != start {
            // Whole object from byte 0: take everything left from this one answer.
            no_range = true;
            j = regions.len();
        }
        let mut resp = body.resp;
        let mut pos = body.start;
        let mut bufs: Vec<Option<Vec<u8>>> = vec![None; j - i];
        let mut first = i;
        let broke = loop {
            while first < j && done[first] {
                first += 1;
            }
            if first == j {
                break None;
            }
            match resp.chunk().await {
                Ok(Some(b)) => {
                    let (cs, ce) = (pos, pos + b.len() as u64);
                    for m in first..j {
                        let (rs, rl) = regions[m];
                        if rs >= ce {
                            break;
                        }
                        if done[m] || rs + rl <= cs {
                            continue;
                        }
                        let buf = bufs[m - i].get_or_insert_with(Vec::new);
                        let from = rs.max(cs) - cs;
                        let to = (rs + rl).min(ce) - cs;
                        buf.extend_from_slice(&b[from as usize..to as usize]);
                        if buf.len() as u64 == rl {
                            done[m] = true;
                            on(m, bufs[m - i].take().unwrap_or_default())?;
                        }
                    }
                    pos = ce;
                }
                Ok(None) => {
                    // End of the object: what is left is cut short (the caller judges).
                    for m in first..j {
                        if !done[m] {
                            done[m] = true;
                            on(m, bufs[m - i].take().unwrap_or_default())?;
                        }
                    }
                    break None;
                }
                Err(e) => break Some(crate::conductor::client::error_chain(&e)),
            }
        };
        if let Some(why) = broke {
            failures += 1;
            if failures > o.retries {
                return Err(FetchError::Exhausted {
                    attempts: failures,
                    last: format!("reading image metadata: {why}"),
                }
                .into());
            }
            tracing::warn!(error = %why, "image metadata read interrupted, retrying");
            tokio::time::sleep(o.retry_interval).await;
            continue;
        }
        i = j;
    }
    Ok(total)
}
