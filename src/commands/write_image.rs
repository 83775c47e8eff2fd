//! Writing the instance image: the `write_image` deploy step and `standby.prepare_image`.
//! Whole-disk images go through the image pipeline onto the disk the node's root device hints
//! choose; the result is the disk identifier the conductor passes back to install_bootloader.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{args, Context, Outcome, Params};
use crate::error::{CommandError, ErrorKind};
use crate::image::info::ImageInfo;
use crate::image::pipeline::{self, ImageError};
use crate::image::progress::Progress;
use crate::image::write::Target;

fn image_error(e: ImageError) -> CommandError {
    CommandError::new(e.kind(), e.to_string())
}

/// The MBR disk signature (bytes 440..444), IPA's whole-disk "root uuid": `0x%08x`.
pub fn disk_identifier(dev: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 4];
    std::fs::File::open(dev)?.read_exact_at(&mut b, 440)?;
    Ok(format!("0x{:08x}", u32::from_le_bytes(b)))
}

fn has_configdrive(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// Write `image_info` to the root device; returns IPA's message.
pub fn write(
    ctx: &Context,
    image_info: &Value,
    configdrive: Option<&Value>,
) -> Result<String, CommandError> {
    let info = ImageInfo::parse(image_info)
        .map_err(|e| CommandError::new(ErrorKind::InvalidParams, e.to_string()))?;
    let id = info.safe_id();
    // The cache key is the whole id: the shortened, sanitised one could make two images one.
    let key = info.id.clone();
    let span = tracing::info_span!("write_image", image = %id);
    let _e = span.enter();
    // The step argument wins; older conductors only put it in image_info.
    let configdrive = configdrive.filter(|v| has_configdrive(Some(v))).or(info
        .configdrive
        .as_ref()
        .filter(|v| has_configdrive(Some(v))));
    // IPA's cache rule: the same image id again is already on the disk.
    if let Some((dev, done)) = ctx.deployed.lock().ok().and_then(|d| d.clone()) {
        if done == key {
            // What get_partition_uuids answers (a partition image's root file system), else
            // the whole disk's identifier.
            let known = ctx
                .partition_uuids
                .lock()
                .ok()
                .and_then(|p| p["root uuid"].as_str().map(str::to_string));
            let uuid = known.unwrap_or_else(|| disk_identifier(&dev).unwrap_or_default());
            tracing::info!(device = %dev.display(), "image already written, skipping");
            return Ok(format!(
                "image ({id}) already present on device {} root_uuid={uuid}",
                dev.display()
            ));
        }
    }
    let device = ctx.root_disk(ctx.config.strict_root_device)?.name;
    let dev = std::path::PathBuf::from(&device);
    ctx.check_test_disk(&dev)?;
    let fetch = info
        .fetch_options(&ctx.config)
        .map_err(|e| CommandError::new(ErrorKind::InvalidParams, e.to_string()))?;
    let req = info.request(&ctx.config, &fetch).map_err(image_error)?;
    // What holds the old table (an old tenant's md array or LVM group) goes first.
    crate::disk::device::release_holders(&dev);
    if info.is_partition_image() {
        return write_partition(ctx, &info, &dev, configdrive, key, &req, &fetch);
    }
    let target = Target::open(&dev).map_err(|e| image_error(e.into()))?;
    let report =
        with_progress(ctx, |p| pipeline::run(&req, &fetch, &target, p)).map_err(image_error)?;
    drop(target);
    if let Some(cd) = configdrive {
        let iso = fetch_configdrive(cd, &fetch)?;
        crate::disk::configdrive::write(&dev, &iso)
            .map_err(|e| CommandError::new(ErrorKind::Deployment, e.to_string()))?;
    }
    let uuid = disk_identifier(&dev).map_err(|e| {
        CommandError::new(ErrorKind::ImageWrite, format!("reading back {device}: {e}"))
    })?;
    if let Ok(mut p) = ctx.partition_uuids.lock() {
        *p = json!({ "root uuid": uuid });
    }
    if let Ok(mut d) = ctx.deployed.lock() {
        *d = Some((dev, key.clone()));
    }
    tracing::info!(%device, root_uuid = %uuid, bytes = report.bytes_written, seconds = report.seconds, "image written");
    Ok(format!(
        "image ({id}) written to device {device} root_uuid={uuid}"
    ))
}

/// Run `f` with a fresh transfer progress that the running command's result and the
/// heartbeats read meanwhile.
fn with_progress<T>(ctx: &Context, f: impl FnOnce(&Arc<Progress>) -> T) -> T {
    let progress = Arc::new(Progress::default());
    if let Ok(mut p) = ctx.progress.lock() {
        *p = Some(progress.clone());
    }
    let out = f(&progress);
    if let Ok(mut p) = ctx.progress.lock() {
        *p = None;
    }
    out
}

fn write_partition(
    ctx: &Context,
    info: &ImageInfo,
    dev: &Path,
    configdrive: Option<&Value>,
    key: String,
    req: &pipeline::ImageRequest,
    fetch: &crate::image::fetch::FetchOptions,
) -> Result<String, CommandError> {
    // The config drive first: its size is part of the layout.
    let iso = configdrive
        .map(|cd| fetch_configdrive(cd, fetch))
        .transpose()?;
    let w = with_progress(ctx, |p| {
        crate::deploy::partition_image::write(info, dev, req, fetch, iso, p)
    })?;
    if let Ok(mut p) = ctx.partition_uuids.lock() {
        *p = w.uuids;
    }
    if let Ok(mut d) = ctx.deployed.lock() {
        *d = Some((dev.to_path_buf(), key));
    }
    Ok(w.message)
}

/// The config drive as bytes of an ISO image: inline (base64, gzip) or from a URL.
fn fetch_configdrive(
    v: &Value,
    o: &crate::image::fetch::FetchOptions,
) -> Result<Vec<u8>, CommandError> {
    use crate::disk::configdrive;
    let err = |e: String| CommandError::new(ErrorKind::Deployment, e);
    match v {
        Value::String(s) if crate::image::verify::is_url(s) => {
            let body = crate::image::fetch::fetch_sniffed(
                s,
                o,
                (configdrive::MAX * 2) as usize,
                Some(&configdrive::sniff_download),
            )
                .map_err(|e| err(format!("config drive: {e}")))?;
            configdrive::decode_downloaded(&body).map_err(|e| err(e.to_string()))
        }
        Value::String(s) => configdrive::decode(s.as_bytes()).map_err(|e| err(e.to_string())),
        _ => Err(err("config drive: expected a base64 string or a URL (the conductor builds JSON config drives into an ISO)".into())),
    }
}

#[derive(serde::Deserialize)]
struct PrepareArgs {
    image_info: Value,
    #[serde(default)]
    configdrive: Option<Value>,
}

pub fn validate(params: &Params) -> Result<(), CommandError> {
    let v = params.get("image_info").cloned().unwrap_or(Value::Null);
    ImageInfo::parse(&v)
        .map(|_| ())
        .map_err(|e| CommandError::new(ErrorKind::InvalidParams, e.to_string()))
}

/// `standby.prepare_image` (older conductors call it directly).
pub fn prepare_image(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: PrepareArgs = args(params)?;
    write(ctx, &a.image_info, a.configdrive.as_ref()).map(Outcome::Text)
}

#[derive(serde::Deserialize)]
struct CacheArgs {
    image_info: Value,
    #[serde(default)]
    force: bool,
}

/// `standby.cache_image` (older conductors, fast-track): write the image now, without a
/// config drive; `force` writes it again even when this image id is already on the disk.
pub fn cache_image(ctx: &Context, params: Params) -> Result<Outcome, CommandError> {
    let a: CacheArgs = args(params)?;
    if a.force {
        if let Ok(mut d) = ctx.deployed.lock() {
            *d = None;
        }
    }
    write(ctx, &a.image_info, None).map(Outcome::Text)
}

/// The `write_image` deploy step: `{image_info, configdrive}`.
pub fn write_image_step(
    ctx: &Context,
    step_args: &serde_json::Map<String, Value>,
) -> Result<Option<Value>, CommandError> {
    let info = step_args.get("image_info").ok_or_else(|| {
        CommandError::new(ErrorKind::InvalidParams, "write_image needs image_info")
    })?;
    let msg = write(ctx, info, step_args.get("configdrive"))?;
    Ok(Some(json!({ "result": format!("prepare_image: {msg}") })))
}
