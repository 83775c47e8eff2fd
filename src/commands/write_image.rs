//! Writing the instance image: the `write_image` deploy step and `standby.prepare_image`.
//! The handler parses `image_info`, applies IPA's cache rule, picks the disk the node's root
//! device hints choose, and hands the write to `deploy` (whole disk or partition image); the
//! result is what get_partition_uuids then answers.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{args, Context, Outcome, Params};
use crate::deploy::whole_disk::{self, disk_identifier, fetch_configdrive};
use crate::error::{CommandError, ErrorKind};
use crate::image::info::ImageInfo;
use crate::image::pipeline::{self, ImageError};
use crate::image::progress::Progress;

fn image_error(e: ImageError) -> CommandError {
    CommandError::new(e.kind(), e.to_string())
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
    let fetch = info
        .fetch_options(&ctx.config)
        .map_err(|e| CommandError::new(ErrorKind::InvalidParams, e.to_string()))?;
    // IPA's cache rule: the same image id again is already on the disk, as long as nothing
    // changed the disk since it was written (see `Context::forget_written`). A whole-disk
    // image's config drive is written again every time, as IPA does (a rebuild brings a new
    // one); a partition image's config drive is part of its layout, so with one the whole
    // image is written again.
    let cached = crate::panics::lock(&ctx.deployed)
        .clone()
        .filter(|w| w.image.as_deref() == Some(key.as_str()));
    if let Some(w) = cached {
        if !info.is_partition_image() || configdrive.is_none() {
            let dev = w.device;
            if let Some(cd) = configdrive.filter(|_| !info.is_partition_image()) {
                whole_disk::write_configdrive(&dev, cd, &fetch)?;
            }
            // What get_partition_uuids answers (a partition image's root file system), else
            // the whole disk's identifier.
            let known = crate::panics::lock(&ctx.partition_uuids)["root uuid"]
                .as_str()
                .map(str::to_string);
            let uuid = known.unwrap_or_else(|| disk_identifier(&dev).unwrap_or_default());
            tracing::info!(device = %dev.display(), configdrive = configdrive.is_some(), "image already written, not written again");
            return Ok(format!(
                "image ({id}) already present on device {} root_uuid={uuid}",
                dev.display()
            ));
        }
    }
    let device = ctx.root_disk(ctx.config.strict_root_device)?.name;
    let dev = std::path::PathBuf::from(&device);
    ctx.check_test_disk(&dev)?;
    // From here the disk is being changed: a failure leaves no image that counts as present.
    ctx.forget_written("write_image");
    let req = info.request(&ctx.config, &fetch).map_err(image_error)?;
    if info.is_partition_image() {
        return write_partition(ctx, &info, &dev, configdrive, key, &req, &fetch);
    }
    let uuid = with_progress(ctx, |p| {
        whole_disk::write(&dev, &req, &fetch, configdrive, p)
    })?;
    {
        let mut p = crate::panics::lock(&ctx.partition_uuids);
        *p = json!({ "root uuid": uuid });
    }
    *crate::panics::lock(&ctx.deployed) = Some(super::Written {
        device: dev,
        image: Some(key),
    });
    Ok(format!(
        "image ({id}) written to device {device} root_uuid={uuid}"
    ))
}

/// Run `f` with a fresh transfer progress that the running command's result and the
/// heartbeats read meanwhile.
fn with_progress<T>(ctx: &Context, f: impl FnOnce(&Arc<Progress>) -> T) -> T {
    let progress = Arc::new(Progress::default());
    {
        let mut p = crate::panics::lock(&ctx.progress);
        *p = Some(progress.clone());
    }
    let out = f(&progress);
    {
        let mut p = crate::panics::lock(&ctx.progress);
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
    {
        let mut p = crate::panics::lock(&ctx.partition_uuids);
        *p = w.uuids;
    }
    *crate::panics::lock(&ctx.deployed) = Some(super::Written {
        device: dev.to_path_buf(),
        image: Some(key),
    });
    Ok(w.message)
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
        ctx.forget_written("cache_image force");
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
