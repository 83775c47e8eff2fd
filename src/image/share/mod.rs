//! Peer image sharing: agents deploying the same image at once exchange verified pieces of it
//! over BitTorrent, so the image server sends about one copy whatever the number of nodes.
//!
//! Opt-in (`rivet-peer-share=1`), and only for an image with a `.torrent` beside it on its own
//! server (`<image URL>.torrent`, fetched with the image's credentials): the torrent's piece
//! hashes are what every piece is checked against before it is written or served. The image
//! server is the web seed; the whole-image checksum from the conductor is still checked at
//! the end, as without sharing.

pub mod bencode;
pub mod lsd;
pub mod swarm;
pub mod torrent;
pub mod wire;

pub use swarm::{ShareOptions, ShareStats, Swarm};
pub use torrent::Torrent;

use super::fetch::{self, FetchError, FetchOptions};

/// A torrent larger than this is refused (8 MiB holds 400,000 pieces: 100 TiB at 256 KiB).
pub const MAX_TORRENT: usize = 8 << 20;

/// `<image URL>.torrent`: the path gets the suffix, a query string stays where it is.
pub fn torrent_url(image_url: &str) -> Option<String> {
    let mut u = url::Url::parse(image_url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.path().ends_with('/') {
        return None;
    }
    let p = format!("{}.torrent", u.path());
    u.set_path(&p);
    Some(u.into())
}

/// The image's torrent, if its server has one. No torrent (or no answer) is not an error:
/// the image comes from its server alone, as without sharing. A torrent that is there but
/// invalid is: an operator who published one wants to know.
pub fn find(urls: &[String], o: &FetchOptions) -> Result<Option<Torrent>, FetchError> {
    let Some(url) = urls.first().and_then(|u| torrent_url(u)) else {
        return Ok(None);
    };
    let mut quick = o.clone();
    // A missing torrent must not cost the deploy the image download's retry budget.
    quick.retries = quick.retries.min(2);
    let doc = match fetch::fetch_small(&url, &quick, MAX_TORRENT) {
        Ok(d) => d,
        Err(FetchError::Status { status, .. }) if (400..500).contains(&status) => {
            tracing::info!(
                status,
                "peer sharing: no torrent beside the image; its server alone"
            );
            return Ok(None);
        }
        Err(e @ FetchError::TooLarge { .. }) => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "peer sharing: the torrent could not be fetched; the image server alone");
            return Ok(None);
        }
    };
    Torrent::parse(&doc)
        .map(Some)
        .map_err(|e| FetchError::Refused {
            url: crate::redact::url(&url).into_owned(),
            why: e.to_string(),
        })
}

/// Join the swarm for this image when it has a torrent.
pub fn join(
    urls: &[String],
    o: &FetchOptions,
    opts: &ShareOptions,
) -> Result<Option<Swarm>, FetchError> {
    let Some(t) = find(urls, o)? else {
        return Ok(None);
    };
    if o.auth != fetch::Auth::None {
        // Said in the log, since it is the operator's choice: the server's credentials do not
        // protect what the agents serve (docs/peer-sharing.md, threat model).
        tracing::warn!(
            "peer sharing: this image needs credentials at its server, yet its pieces are served to any peer on the provisioning network that knows the torrent's info hash"
        );
    }
    match Swarm::start(t, urls.to_vec(), o, opts.clone()) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(error = %e, "peer sharing could not start; the image server alone");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torrent_urls() {
        assert_eq!(
            torrent_url("http://h:8080/images/disk.qcow2").as_deref(),
            Some("http://h:8080/images/disk.qcow2.torrent")
        );
        assert_eq!(
            torrent_url("https://swift/v1/c/img?temp_url_sig=x&temp_url_expires=1").as_deref(),
            Some("https://swift/v1/c/img.torrent?temp_url_sig=x&temp_url_expires=1")
        );
        assert_eq!(torrent_url("oci://registry/x"), None);
        assert_eq!(torrent_url("http://h/dir/"), None);
        assert_eq!(torrent_url("not a url"), None);
    }
}
