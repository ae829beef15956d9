//! The two session halves, one behaviour at a time.

use firmware_proto::{
    Ack, Action, Capabilities, DeviceConfig, DeviceSession, DeviceTime, FirmwareVersion,
    GatewaySession, Heartbeat, Hello, Message, Nack, PushError, Reading, Readings, Resend,
    TimeSync, Value,
};

const EPOCH: u32 = 5;
const RETRANSMIT_MS: u64 = 2_000;

fn config(boot_epoch: u32) -> DeviceConfig {
    DeviceConfig::new(
        "dev-1".try_into().expect("short id"),
        FirmwareVersion {
            major: 1,
            minor: 2,
            patch: 3,
        },
        boot_epoch,
        Capabilities::NONE,
    )
}

fn batch(channel: u16, time: DeviceTime) -> heapless::Vec<Reading, 16> {
    let reading = Reading {
        channel,
        value: Value::Int(i64::from(channel)),
        time,
    };
    heapless::Vec::from_slice(&[reading]).expect("one reading fits")
}

/// A session that has already sent its `Hello`.
fn started_device<const Q: usize>() -> DeviceSession<Q> {
    let mut device = DeviceSession::new(config(EPOCH));
    assert!(matches!(device.poll(0), Some(Message::Hello(_))));
    device
}

fn sent_seq(message: Option<Message>) -> Option<u32> {
    match message {
        Some(Message::Readings(readings)) => Some(readings.seq),
        _ => None,
    }
}

fn ack(seq: u32) -> Message {
    Message::Ack(Ack {
        boot_epoch: EPOCH,
        seq,
    })
}

fn hello(boot_epoch: u32, resume_seq: u32) -> Message {
    Message::Hello(Hello {
        device_id: "dev-1".try_into().expect("short id"),
        firmware_version: FirmwareVersion {
            major: 1,
            minor: 2,
            patch: 3,
        },
        boot_epoch,
        capabilities: Capabilities::NONE,
        resume_seq,
    })
}

fn readings(boot_epoch: u32, seq: u32) -> Message {
    Message::Readings(Readings {
        boot_epoch,
        seq,
        readings: heapless::Vec::new(),
    })
}

// ---- device ----

#[test]
fn first_poll_is_hello_with_resume_seq_zero() {
    let mut device: DeviceSession<4> = DeviceSession::new(config(EPOCH));
    device
        .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
        .expect("room");
    assert_eq!(device.poll(0), Some(hello(EPOCH, 0)));
    assert_eq!(sent_seq(device.poll(0)), Some(0));
}

#[test]
fn sequence_numbers_start_at_zero_and_increase() {
    let mut device: DeviceSession<4> = started_device();
    for expected in 0..3 {
        let seq = device.push_readings(batch(1, DeviceTime::MonotonicMs(0)));
        assert_eq!(seq, Ok(expected));
    }
    let sent: Vec<_> = (0..3).map(|_| sent_seq(device.poll(1))).collect();
    assert_eq!(sent, [Some(0), Some(1), Some(2)]);
    assert_eq!(device.poll(1), None);
}

#[test]
fn full_queue_is_reported_not_dropped() {
    let mut device: DeviceSession<2> = started_device();
    for _ in 0..2 {
        device
            .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
            .expect("room");
    }
    assert_eq!(
        device.push_readings(batch(9, DeviceTime::MonotonicMs(0))),
        Err(PushError::QueueFull { capacity: 2 })
    );
    assert_eq!(device.unacked_len(), 2);
    device.on_message(&ack(0), 1);
    assert_eq!(device.free_slots(), 1);
    assert_eq!(
        device.push_readings(batch(9, DeviceTime::MonotonicMs(0))),
        Ok(2)
    );
}

#[test]
fn cumulative_ack_drops_everything_up_to_seq() {
    let mut device: DeviceSession<4> = started_device();
    for _ in 0..4 {
        device
            .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
            .expect("room");
    }
    device.on_message(&ack(2), 1);
    assert_eq!(device.unacked_len(), 1);
    // Batches 0..=2 are gone, so the first one sent is 3.
    assert_eq!(sent_seq(device.poll(1)), Some(3));
}

#[test]
fn ack_for_another_epoch_is_ignored() {
    let mut device: DeviceSession<4> = started_device();
    device
        .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
        .expect("room");
    device.on_message(
        &Message::Ack(Ack {
            boot_epoch: EPOCH - 1,
            seq: 10,
        }),
        1,
    );
    assert_eq!(device.unacked_len(), 1);
}

#[test]
fn oldest_unacked_batch_is_resent_after_the_timeout_with_everything_after_it() {
    let mut device: DeviceSession<4> = started_device();
    for _ in 0..2 {
        device
            .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
            .expect("room");
    }
    assert_eq!(sent_seq(device.poll(10)), Some(0));
    assert_eq!(sent_seq(device.poll(10)), Some(1));
    assert_eq!(device.poll(10 + RETRANSMIT_MS - 1), None);
    assert_eq!(sent_seq(device.poll(10 + RETRANSMIT_MS)), Some(0));
    assert_eq!(sent_seq(device.poll(10 + RETRANSMIT_MS)), Some(1));
    assert_eq!(device.poll(10 + RETRANSMIT_MS), None);
}

#[test]
fn resend_rewinds_at_once() {
    let mut device: DeviceSession<4> = started_device();
    for _ in 0..3 {
        device
            .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
            .expect("room");
        device.poll(1);
    }
    let resend = Message::Resend(Resend {
        boot_epoch: EPOCH,
        from_seq: 1,
    });
    device.on_message(&resend, 2);
    assert_eq!(sent_seq(device.poll(2)), Some(1));
    assert_eq!(sent_seq(device.poll(2)), Some(2));
}

#[test]
fn nack_rewinds_after_a_pause() {
    let mut device: DeviceSession<4> = started_device();
    device
        .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
        .expect("room");
    device.poll(1);
    let nack = Message::Nack(Nack {
        boot_epoch: EPOCH,
        seq: 0,
    });
    device.on_message(&nack, 100);
    assert_eq!(sent_seq(device.poll(100 + RETRANSMIT_MS - 1)), None);
    assert_eq!(sent_seq(device.poll(100 + RETRANSMIT_MS)), Some(0));
}

#[test]
fn hello_request_repeats_hello_then_resends_from_the_oldest() {
    let mut device: DeviceSession<4> = started_device();
    for _ in 0..3 {
        device
            .push_readings(batch(1, DeviceTime::MonotonicMs(0)))
            .expect("room");
        device.poll(1);
    }
    device.on_message(&ack(0), 2);
    device.on_message(&Message::HelloRequest, 3);
    assert_eq!(device.poll(3), Some(hello(EPOCH, 1)));
    assert_eq!(sent_seq(device.poll(3)), Some(1));
}

#[test]
fn time_sync_turns_monotonic_stamps_into_wall_time() {
    let mut device: DeviceSession<4> = started_device();
    assert_eq!(device.device_time(500), DeviceTime::MonotonicMs(500));
    device.on_message(&Message::TimeSync(TimeSync { unix_ms: 1_000_000 }), 1_000);
    assert_eq!(device.wall_time_ms(1_500), Some(1_000_500));
    assert_eq!(device.device_time(1_500), DeviceTime::WallMs(1_000_500));
    // A reading taken before the sync, pushed after it, is converted too.
    device
        .push_readings(batch(1, DeviceTime::MonotonicMs(200)))
        .expect("room");
    let Some(Message::Readings(sent)) = device.poll(1_500) else {
        panic!("expected the batch");
    };
    assert_eq!(sent.readings[0].time, DeviceTime::WallMs(999_200));
}

#[test]
fn heartbeat_only_when_idle() {
    let mut device: DeviceSession<4> = started_device();
    assert_eq!(device.poll(9_999), None);
    assert_eq!(
        device.poll(10_000),
        Some(Message::Heartbeat(Heartbeat { uptime_ms: 10_000 }))
    );
    assert_eq!(device.poll(10_001), None);
}

// ---- gateway ----

#[test]
fn gateway_appends_in_order_and_acks_when_durable() {
    let mut gateway = GatewaySession::new();
    assert_eq!(
        gateway.on_message(&hello(EPOCH, 0)),
        Action::Welcome { new_epoch: true }
    );
    assert_eq!(gateway.device().map(|h| h.boot_epoch), Some(EPOCH));
    assert_eq!(
        gateway.on_message(&readings(EPOCH, 0)),
        Action::Append {
            boot_epoch: EPOCH,
            seq: 0
        }
    );
    assert_eq!(
        gateway.appended(EPOCH, 0),
        Ack {
            boot_epoch: EPOCH,
            seq: 0
        }
    );
}

#[test]
fn duplicate_is_re_acked_not_appended() {
    let mut gateway = GatewaySession::new();
    gateway.on_message(&hello(EPOCH, 0));
    gateway.on_message(&readings(EPOCH, 0));
    gateway.on_message(&readings(EPOCH, 1));
    // Not durable yet: the Ack will follow, nothing to do.
    assert_eq!(gateway.on_message(&readings(EPOCH, 0)), Action::Ignore);
    gateway.appended(EPOCH, 0);
    let action = gateway.on_message(&readings(EPOCH, 1));
    assert_eq!(
        action,
        Action::DuplicateReAck(Ack {
            boot_epoch: EPOCH,
            seq: 0
        })
    );
    assert_eq!(action.reply(), Some(ack(0)));
}

#[test]
fn gap_requests_one_resend() {
    let mut gateway = GatewaySession::new();
    gateway.on_message(&hello(EPOCH, 0));
    let resend = Action::RequestResend(Resend {
        boot_epoch: EPOCH,
        from_seq: 0,
    });
    assert_eq!(gateway.on_message(&readings(EPOCH, 1)), resend);
    assert_eq!(gateway.on_message(&readings(EPOCH, 2)), Action::Ignore);
    assert!(matches!(
        gateway.on_message(&readings(EPOCH, 0)),
        Action::Append { seq: 0, .. }
    ));
    assert_eq!(
        gateway.on_message(&readings(EPOCH, 2)),
        Action::RequestResend(Resend {
            boot_epoch: EPOCH,
            from_seq: 1
        })
    );
}

#[test]
fn unknown_device_or_epoch_gets_a_hello_request() {
    let mut gateway = GatewaySession::new();
    assert_eq!(
        gateway.on_message(&readings(EPOCH, 3)),
        Action::RequestHello
    );
    let heartbeat = Message::Heartbeat(Heartbeat { uptime_ms: 1 });
    assert_eq!(gateway.on_message(&heartbeat), Action::RequestHello);
    gateway.on_message(&hello(EPOCH, 0));
    assert_eq!(gateway.on_message(&heartbeat), Action::Ignore);
    assert_eq!(
        gateway.on_message(&readings(EPOCH + 1, 0)),
        Action::RequestHello
    );
    assert_eq!(Action::RequestHello.reply(), Some(Message::HelloRequest));
}

#[test]
fn new_epoch_resets_and_resume_seq_sets_the_start() {
    let mut gateway = GatewaySession::new();
    gateway.on_message(&hello(EPOCH, 0));
    gateway.on_message(&readings(EPOCH, 0));
    assert_eq!(
        gateway.on_message(&hello(EPOCH + 1, 0)),
        Action::Welcome { new_epoch: true }
    );
    assert!(matches!(
        gateway.on_message(&readings(EPOCH + 1, 0)),
        Action::Append { seq: 0, .. }
    ));
    // After a gateway restart the device resumes at its oldest unacked batch.
    let mut restarted = GatewaySession::new();
    restarted.on_message(&hello(EPOCH, 7));
    assert!(matches!(
        restarted.on_message(&readings(EPOCH, 8)),
        Action::RequestResend(Resend { from_seq: 7, .. })
    ));
    assert!(matches!(
        restarted.on_message(&readings(EPOCH, 7)),
        Action::Append { seq: 7, .. }
    ));
}

#[test]
fn repeated_hello_of_the_same_epoch_keeps_the_state() {
    let mut gateway = GatewaySession::new();
    gateway.on_message(&hello(EPOCH, 0));
    gateway.on_message(&readings(EPOCH, 0));
    assert_eq!(
        gateway.on_message(&hello(EPOCH, 0)),
        Action::Welcome { new_epoch: false }
    );
    assert_eq!(gateway.on_message(&readings(EPOCH, 0)), Action::Ignore);
}

#[test]
fn failed_append_is_nacked_and_appended_on_retransmission() {
    let mut gateway = GatewaySession::new();
    gateway.on_message(&hello(EPOCH, 0));
    gateway.on_message(&readings(EPOCH, 0));
    assert_eq!(
        gateway.append_failed(EPOCH, 0),
        Nack {
            boot_epoch: EPOCH,
            seq: 0
        }
    );
    assert!(matches!(
        gateway.on_message(&readings(EPOCH, 0)),
        Action::Append { seq: 0, .. }
    ));
}
