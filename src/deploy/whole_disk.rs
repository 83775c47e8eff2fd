//! Whole-disk images: the image pipeline onto the disk, then the config drive (a partition
//! of the image's own table, or a new one at the end), under one claim of the disk. The result
//! is IPA's whole-disk "root uuid", the MBR disk signature.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::disk::configdrive;
use crate::error::{CommandError, ErrorKind};
use crate::image::fetch::{FetchOptions, Refusal};
use crate::image::pipeline::{self, ImageRequest};
use crate::image::progress::Progress;
use crate::image::write::Target;

/// The MBR disk signature (bytes 440..444), IPA's whole-disk "root uuid": `0x%08x`.
pub fn disk_identifier(dev: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 4];
    std::fs::File::open(dev)?.read_exact_at(&mut b, 440)?;
    Ok(format!("0x{:08x}", u32::from_le_bytes(b)))
}

/// The config drive as bytes of an ISO image: inline (base64, gzip) or from a URL.
pub fn fetch_configdrive(v: &Value, o: &FetchOptions) -> Result<Vec<u8>, CommandError> {
    let err = |e: String| CommandError::new(ErrorKind::Deployment, e);
    match v {
        Value::String(s) if crate::image::verify::is_url(s) => {
            let body = crate::image::fetch::fetch_sniffed(
                s,
                o,
                (configdrive::MAX * 2) as usize,
                Some(&|b: &[u8]| configdrive::sniff_download(b).map_err(Refusal::from_error)),
            )
                .map_err(|e| err(format!("config drive: {e}")))?;
            configdrive::decode_downloaded(&body).map_err(|e| err(e.to_string()))
        }
        Value::String(s) => configdrive::decode(s.as_bytes()).map_err(|e| err(e.to_string())),
        _ => Err(err("config drive: expected a base64 string or a URL (the conductor builds JSON config drives into an ISO)".into())),
    }
}

/// Write the config drive `configdrive` (inline or a URL) onto `dev`, which holds an image
/// already: into its config-2 partition when it has one, else a new one at the end.
pub fn write_configdrive(
    dev: &Path,
    configdrive: &Value,
    fetch: &FetchOptions,
) -> Result<(), CommandError> {
    let iso = fetch_configdrive(configdrive, fetch)?;
    let disk = crate::disk::device::Device::open(dev)
        .map_err(|e| CommandError::new(ErrorKind::Deployment, e.to_string()))?;
    configdrive::write(&disk, &iso)
        .map_err(|e| CommandError::new(ErrorKind::Deployment, e.to_string()))?;
    tracing::info!(device = %dev.display(), "config drive written");
    Ok(())
}

/// Write `req` onto `dev`, then the config drive `configdrive` (inline or a URL) if any;
/// returns the disk identifier.
pub fn write(
    dev: &Path,
    req: &ImageRequest,
    fetch: &FetchOptions,
    configdrive: Option<&Value>,
    progress: &Arc<Progress>,
) -> Result<String, CommandError> {
    let image_error = |e: pipeline::ImageError| CommandError::new(e.kind(), e.to_string());
    // What holds the old table (an old tenant's md array or LVM group) goes first.
    crate::disk::nodes::release_holders(dev);
    let target = Target::open(dev).map_err(|e| image_error(e.into()))?;
    let report = pipeline::run(req, fetch, &target, progress).map_err(image_error)?;
    // The disk stays open (and claimed) for the config drive.
    let disk = target.into_device();
    if let Some(cd) = configdrive {
        let iso = fetch_configdrive(cd, fetch)?;
        configdrive::write(&disk, &iso)
            .map_err(|e| CommandError::new(ErrorKind::Deployment, e.to_string()))?;
    }
    let uuid = disk_identifier(dev).map_err(|e| {
        CommandError::new(
            ErrorKind::ImageWrite,
            format!("reading back {}: {e}", dev.display()),
        )
    })?;
    tracing::info!(device = %dev.display(), root_uuid = %uuid, bytes = report.bytes_written,
        seconds = report.seconds, "image written");
    Ok(uuid)
}
