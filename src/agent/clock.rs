//! The start-up phase `clock` and the RTC before power-off: `ipa-ntp-server` (one or several,
//! comma-separated) asked by SNTP until one answers, for a bounded time. A node whose RTC is
//! years off would refuse Ironic's certificate as not yet valid; after this phase it verifies
//! it like any other. With no answer the agent says so once and goes on with the clock it has,
//! unless IPA's `fail_if_clock_not_set` is set in an ironic-python-agent.d file.

use std::time::{Duration, Instant};

use super::AgentError;
use crate::config::Config;
use crate::network::sntp;

/// How long the servers are asked at start-up: the network may still be coming up.
const START_BUDGET: Duration = Duration::from_secs(30);
/// One query's wait.
const QUERY_WAIT: Duration = Duration::from_secs(2);

/// Ask every server in turn until one answers or `budget` is spent; set the clock from the
/// first answer. Returns what happened, for the log.
async fn sync(list: &str, budget: Duration) -> Result<String, String> {
    let start = Instant::now();
    let mut last: Vec<String>;
    loop {
        let (servers, errors) = sntp::servers(list).await;
        last = errors;
        let mut refused = 0;
        for s in &servers {
            match sntp::query(*s, QUERY_WAIT).await {
                Ok(a) => {
                    let before = sntp::now();
                    sntp::set_clock(a.unix)?;
                    return Ok(format!(
                        "clock set from {} (moved {:+.3} s, round trip {} ms)",
                        a.server,
                        a.unix - before,
                        a.round_trip.as_millis()
                    ));
                }
                Err(e) => {
                    refused += usize::from(e == sntp::REFUSED);
                    last.push(format!("{s}: {e}"));
                }
            }
        }
        // Every server's host said there is no NTP server: waiting will not make one.
        if !servers.is_empty() && refused == servers.len() {
            return Err(format!("no NTP server answered ({})", last.join("; ")));
        }
        if start.elapsed() + QUERY_WAIT >= budget {
            break;
        }
        // Nothing resolvable or routable yet (the address may be on its way): a short pause.
        if servers.is_empty() || last.iter().all(|e| !e.contains("no answer")) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Err(format!(
        "no NTP server answered within {:.0} s ({})",
        budget.as_secs_f64(),
        last.join("; ")
    ))
}

/// The start-up phase: before inspection and lookup, the first TLS connections.
pub(super) async fn set_at_start(cfg: &Config) -> Result<(), AgentError> {
    let Some(list) = cfg.ntp_server.as_deref().filter(|s| !s.trim().is_empty()) else {
        return Ok(());
    };
    match sync(list, START_BUDGET).await {
        Ok(what) => {
            tracing::info!(ntp_server = list, "{what}");
            crate::timeline::mark("clock_set");
            Ok(())
        }
        Err(e) if cfg.fail_if_clock_not_set => Err(AgentError::Clock(format!(
            "{e}; fail_if_clock_not_set is true, so the agent stops here"
        ))),
        Err(e) => {
            let now = time::OffsetDateTime::from_unix_timestamp(sntp::now() as i64)
                .map(|t| t.to_string())
                .unwrap_or_default();
            tracing::error!(
                ntp_server = list,
                "{e}: going on with the clock as it is ({now}); certificates may be refused as not yet valid or expired"
            );
            Ok(())
        }
    }
}

/// Before powering off or rebooting, as IPA does: the clock synced once more and written to
/// the RTC, so the instance boots with the right time.
pub(super) async fn before_power_action(cfg: &Config) {
    let Some(list) = cfg.ntp_server.as_deref().filter(|s| !s.trim().is_empty()) else {
        return;
    };
    match sync(list, Duration::from_secs(5)).await {
        Ok(what) => tracing::info!(ntp_server = list, "{what}"),
        Err(e) => tracing::warn!(ntp_server = list, "{e}"),
    }
    match crate::system::tools::run_capture(
        "hwclock",
        &["--systohc", "--utc"],
        Duration::from_secs(10),
        4096,
    ) {
        Ok((true, _)) => tracing::info!("hardware clock written from the system clock"),
        Ok((false, out)) => tracing::warn!(
            output = %String::from_utf8_lossy(&out),
            "hwclock could not write the hardware clock"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot write the hardware clock"),
    }
}
