//! Uses the encoder, the decoder and both session halves the way firmware
//! would, so that all of it must link without std.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;

use firmware_proto::heapless::{String, Vec};
use firmware_proto::{
    encode_frame, Action, Capabilities, DeviceConfig, DeviceSession, FirmwareVersion, FrameDecoder,
    GatewaySession, Message, Reading, Value, MAX_CONTROL_RAW_FRAME_LEN, MAX_FRAME_LEN,
};

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    loop {}
}

/// One exchange: the device sends Hello and a batch, the gateway appends it,
/// and its Ack travels back through a device-sized decoder.
fn exercise(now_ms: u64) -> usize {
    let device_id = String::try_from("nostd-check").unwrap_or_default();
    let version = FirmwareVersion {
        major: 0,
        minor: 1,
        patch: 0,
    };
    let config = DeviceConfig::new(device_id, version, 1, Capabilities::HAS_CLOCK);
    let mut device: DeviceSession<2> = DeviceSession::new(config);
    let mut readings = Vec::new();
    let time = device.device_time(now_ms);
    let _ = readings.push(Reading {
        channel: 1,
        value: Value::Float(1.5),
        time,
    });
    let _ = device.push_readings(readings);

    let mut gateway = GatewaySession::new();
    let mut uplink: FrameDecoder = FrameDecoder::new();
    let mut downlink: FrameDecoder<MAX_CONTROL_RAW_FRAME_LEN> = FrameDecoder::new();
    let mut wire = [0u8; MAX_FRAME_LEN];
    let mut acks = [0u8; MAX_FRAME_LEN];
    let mut acks_len = 0;
    while let Some(message) = device.poll(now_ms) {
        let Ok(len) = encode_frame(&message, &mut wire) else {
            break;
        };
        uplink.push(&wire[..len], |event| {
            let Ok(message) = event else { return };
            if let Action::Append { boot_epoch, seq } = gateway.on_message(&message) {
                let ack = Message::Ack(gateway.appended(boot_epoch, seq));
                acks_len = encode_frame(&ack, &mut acks).unwrap_or(0);
            }
        });
    }
    downlink.push(&acks[..acks_len], |event| {
        if let Ok(message) = event {
            device.on_message(&message, now_ms);
        }
    });
    device.unacked_len()
}

/// The host's prebuilt `core` is compiled for unwinding and so references a
/// personality routine even under `panic = "abort"`; it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    black_box(exercise(black_box(1_000)));
    loop {}
}
