//! The broker objects bodflow owns (DESIGN §5.3), declared idempotently on every (re)connect.
//!
//! | thing | name |
//! | --- | --- |
//! | inbound exchange (topic) | [`IN_EXCHANGE`], bound with `#` to [`INBOUND_QUEUE`] |
//! | inbound queue (durable) | [`INBOUND_QUEUE`], `x-dead-letter-exchange` = [`DLX`] |
//! | outbound exchange (direct) | [`OUT_EXCHANGE`]: routing key = receiver's logical ID |
//! | per-application queue (durable) | `bodflow.to.<slug>`, bound with its logical ID |
//! | dead letters (fanout → durable queue) | [`DLX`] → [`DEAD_QUEUE`] |
//!
//! Declaring with other arguments than an existing object's fails with `PRECONDITION_FAILED`:
//! that is an operator error and surfaces as a connection error.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::{short, Error};
use crate::config::Config;

pub const IN_EXCHANGE: &str = "bodflow.in";
pub const INBOUND_QUEUE: &str = "bodflow.inbound";
pub const OUT_EXCHANGE: &str = "bodflow.out";
pub const DLX: &str = "bodflow.dlx";
pub const DEAD_QUEUE: &str = "bodflow.dead";

/// `bodflow.to.<slug>` of a configured application.
pub fn application_queue(slug: &str) -> String {
    format!("bodflow.to.{slug}")
}

async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), Error> {
    channel
        .exchange_declare(
            short(name)?,
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn queue(channel: &Channel, name: &str, arguments: FieldTable) -> Result<(), Error> {
    channel
        .queue_declare(
            short(name)?,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), Error> {
    channel
        .queue_bind(
            short(queue)?,
            short(exchange)?,
            short(key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares every exchange, queue and binding; safe to repeat.
pub async fn declare(channel: &Channel, config: &Config) -> Result<(), Error> {
    exchange(channel, DLX, ExchangeKind::Fanout).await?;
    queue(channel, DEAD_QUEUE, FieldTable::default()).await?;
    bind(channel, DEAD_QUEUE, DLX, "").await?;

    exchange(channel, IN_EXCHANGE, ExchangeKind::Topic).await?;
    let mut inbound_args = FieldTable::default();
    inbound_args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(DLX.into()),
    );
    queue(channel, INBOUND_QUEUE, inbound_args).await?;
    bind(channel, INBOUND_QUEUE, IN_EXCHANGE, "#").await?;

    exchange(channel, OUT_EXCHANGE, ExchangeKind::Direct).await?;
    for app in &config.applications {
        let name = application_queue(&app.slug());
        queue(channel, &name, FieldTable::default()).await?;
        bind(channel, &name, OUT_EXCHANGE, &app.logical_id).await?;
    }
    Ok(())
}
