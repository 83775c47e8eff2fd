//! Reads a remote qcow2 image's mapping before the write pass: L1, then every L2 table, then
//! the clusters behind the first guest bytes (so a GPT made for another sector size is refused
//! before anything is written).

use std::collections::HashMap;

use super::fetch::{FetchError, FetchOptions};
use super::qcow2::{self, Map, MapBuilder, Qcow2Error};
use super::ranges::read_regions;

/// Guest bytes needed to tell a 512-byte GPT from a 4096-byte one.
const PROBE: u64 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
}

/// A mapped image and its first guest bytes.
pub struct Prepared {
    pub map: Map,
    pub head: Vec<u8>,
}

pub async fn prepare(
    c: &reqwest::Client,
    urls: &[String],
    o: &FetchOptions,
    start: &[u8],
    file_size: Option<u64>,
) -> Result<Prepared, PrepareError> {
    let h = qcow2::parse_header(start, file_size)?;
    tracing::info!(
        version = h.version,
        cluster = h.cluster_size(),
        virtual_size = h.virtual_size,
        extended_l2 = h.extended_l2,
        compression = ?h.compression,
        "qcow2 image: reading its tables"
    );
    let mut b = MapBuilder::new(h, start);
    let mut l2s = Vec::new();
    read_regions::<PrepareError, _>(c, urls, o, &[b.l1_region()], |_, l1| {
        l2s = b.add_l1(&l1)?;
        Ok(())
    })
    .await?;
    let regions: Vec<(u64, u64)> = l2s
        .iter()
        .map(|(off, _)| (*off, b.header().cluster_size()))
        .collect();
    read_regions::<PrepareError, _>(c, urls, o, &regions, |k, t| {
        b.add_l2(l2s[k].0, l2s[k].1, &t)?;
        Ok(())
    })
    .await?;
    let map = b.finish()?;
    let wanted = qcow2::head_ranges(&map, PROBE);
    let mut got: HashMap<u64, Vec<u8>> = HashMap::new();
    read_regions::<PrepareError, _>(c, urls, o, &wanted, |k, bytes| {
        got.insert(wanted[k].0, bytes);
        Ok(())
    })
    .await?;
    let head = qcow2::guest_head(&map, PROBE, &mut |host, _| {
        got.remove(&host)
            .ok_or_else(|| Qcow2Error::Corrupt(format!("cluster at {host:#x} could not be read")))
    })?;
    tracing::info!(
        extents = map.extents.len(),
        zero_ranges = map.zeros.len(),
        "qcow2 mapping read"
    );
    Ok(Prepared { map, head })
}
