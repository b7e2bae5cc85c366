//! Handler discovery's RPCs (`AnnounceHandler`, `WithdrawHandler`, `ListHandlers`): validation
//! at the boundary, then the queue layer. `service.rs` only delegates here.

use std::time::Duration;

use tarefa_proto as pb;
use tarefa_queue::{AnnouncedHandler, Broker, HandlerAnnouncement};

use crate::config::Config;
use crate::error::Error;

/// Announcement lifetime when the request gives none.
const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Shortest lifetime accepted: a heartbeat must have time to arrive.
const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lifetime accepted: a dead handler must not be routed to for long.
const MAX_TTL: Duration = Duration::from_secs(300);
/// Most task types one handler may announce.
const MAX_TASK_TYPES: usize = 1000;
/// Longest handler id and task type.
const MAX_NAME_LEN: usize = 128;
/// Longest address.
const MAX_ADDRESS_LEN: usize = 256;

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Queue(tarefa_queue::Error::invalid(field, reason))
}

/// A name of 1 to 128 characters of `[A-Za-z0-9_.:-]` (task types and handler ids).
fn name(value: &str, field: &str) -> Result<String, Error> {
    if value.is_empty()
        || value.len() > MAX_NAME_LEN
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err(invalid(
            field,
            format!(
                "must be 1 to {MAX_NAME_LEN} characters of letters, digits, '_', '.', ':' and '-'"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// `grpc://HOST:PORT`, nothing else: executors call `TaskHandler/Execute` there.
fn address(value: &str) -> Result<String, Error> {
    let reason = "must be grpc://HOST:PORT (the handler's TaskHandler service, plaintext)";
    let rest = value
        .strip_prefix("grpc://")
        .ok_or_else(|| invalid("address", reason))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| invalid("address", reason))?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    if value.len() > MAX_ADDRESS_LEN || !host_ok || !port_ok {
        return Err(invalid("address", reason));
    }
    Ok(value.to_owned())
}

/// Validates an announcement; returns it and its lifetime.
fn announcement(
    request: pb::AnnounceHandlerRequest,
    config: &Config,
) -> Result<(HandlerAnnouncement, Duration), Error> {
    let handler_id = name(&request.handler_id, "handler_id")?;
    let address = address(&request.address)?;
    if request.task_types.is_empty() || request.task_types.len() > MAX_TASK_TYPES {
        return Err(invalid(
            "task_types",
            format!("must name 1 to {MAX_TASK_TYPES} task types"),
        ));
    }
    let mut task_types = request
        .task_types
        .iter()
        .enumerate()
        .map(|(i, t)| name(t, &format!("task_types[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    task_types.sort();
    task_types.dedup();
    let mut queues = Vec::with_capacity(request.queues.len());
    for (i, queue) in request.queues.iter().enumerate() {
        queues.push(crate::convert::queue_name(
            queue,
            config,
            &format!("queues[{i}]"),
        )?);
    }
    queues.sort();
    queues.dedup();
    let ttl = match request.ttl_ms {
        0 => DEFAULT_TTL,
        ms => Duration::from_millis(ms),
    };
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(invalid(
            "ttl_ms",
            format!(
                "must be 0 (the default, {} ms) or {} to {} ms",
                DEFAULT_TTL.as_millis(),
                MIN_TTL.as_millis(),
                MAX_TTL.as_millis()
            ),
        ));
    }
    Ok((
        HandlerAnnouncement {
            handler_id,
            address,
            task_types,
            queues,
        },
        ttl,
    ))
}

/// `AnnounceHandler`.
pub(crate) async fn announce(
    broker: &Broker,
    config: &Config,
    request: pb::AnnounceHandlerRequest,
) -> Result<pb::AnnounceHandlerResponse, Error> {
    let (announcement, ttl) = announcement(request, config)?;
    let expires_at_ms = broker.announce_handler(&announcement, ttl).await?;
    tracing::debug!(
        handler_id = %announcement.handler_id,
        address = %announcement.address,
        task_types = ?announcement.task_types,
        "handler announced"
    );
    Ok(pb::AnnounceHandlerResponse { expires_at_ms })
}

/// `WithdrawHandler`.
pub(crate) async fn withdraw(
    broker: &Broker,
    request: pb::WithdrawHandlerRequest,
) -> Result<pb::WithdrawHandlerResponse, Error> {
    let handler_id = name(&request.handler_id, "handler_id")?;
    let address = address(&request.address)?;
    let withdrawn = broker.withdraw_handler(&handler_id, &address).await?;
    tracing::info!(%handler_id, %address, withdrawn, "handler withdrawn");
    Ok(pb::WithdrawHandlerResponse { withdrawn })
}

/// `ListHandlers`.
pub(crate) async fn list(
    broker: &Broker,
    request: pb::ListHandlersRequest,
) -> Result<pb::ListHandlersResponse, Error> {
    let handlers = broker
        .live_handlers()
        .await?
        .into_iter()
        .filter(|h| {
            request.task_type.is_empty() || h.announcement.task_types.contains(&request.task_type)
        })
        .map(to_proto)
        .collect();
    Ok(pb::ListHandlersResponse { handlers })
}

fn to_proto(handler: AnnouncedHandler) -> pb::AnnouncedHandler {
    let AnnouncedHandler {
        announcement,
        expires_at_ms,
    } = handler;
    pb::AnnouncedHandler {
        handler_id: announcement.handler_id,
        address: announcement.address,
        task_types: announcement.task_types,
        queues: announcement.queues,
        expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_grpc_host_port_only() {
        for good in [
            "grpc://127.0.0.1:50061",
            "grpc://worker-3.svc:1",
            "grpc://[::1]:50061",
        ] {
            assert!(address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1:50061",
            "http://127.0.0.1:80",
            "grpc://127.0.0.1",
            "grpc://:50061",
            "grpc://h:0",
            "grpc://h:70000",
            "grpc://h:1/path",
            "grpc://a,b:1",
            "grpc://a\nb:1",
        ] {
            assert!(address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_reject_separators() {
        assert!(name("mail.send_welcome", "t").is_ok());
        for bad in ["", "a,b", "a\nb", "a b", &"x".repeat(129)] {
            assert!(name(bad, "t").is_err(), "{bad:?}");
        }
    }
}
