//! AMQP 0-9-1 by hand, for what lapin cannot send: a message whose properties a sender wrote
//! byte by byte (a `message_id` that is not UTF-8, a header nested thousands of levels
//! deep). RabbitMQ passes such properties on as they came. Also the frame reading the tests'
//! misbehaving brokers use. Included with `#[path]` by `tests/amqp.rs`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;

/// Reads one AMQP frame (header, payload, end octet) whole.
pub fn read_frame(from: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 7];
    from.read_exact(&mut frame)?;
    let size = u32::from_be_bytes(frame[3..7].try_into().unwrap()) as usize;
    frame.resize(7 + size + 1, 0);
    from.read_exact(&mut frame[7..])?;
    Ok(frame)
}

/// Whether `frame` is the method `class`.`method` (a method frame's payload starts with them).
pub fn is_method(frame: &[u8], class: u16, method: u16) -> bool {
    frame[0] == 1
        && frame.len() >= 12
        && frame[7..11] == [class.to_be_bytes(), method.to_be_bytes()].concat()
}

fn short(s: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).expect("a short string")];
    out.extend_from_slice(s);
    out
}

fn long(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Content-header properties written byte by byte: `headers` (the raw entries of a field
/// table), `delivery_mode` 2 (persistent) and `message_id` (raw bytes, UTF-8 or not).
pub fn properties(message_id: &[u8], header_entries: &[u8]) -> Vec<u8> {
    let flags: u16 = (1 << 13) | (1 << 12) | (1 << 7);
    let mut out = flags.to_be_bytes().to_vec();
    out.extend(long(header_entries));
    out.push(2);
    out.extend(short(message_id));
    out
}

/// A field-table entry: `name` (raw bytes) and a long-string value.
pub fn string_entry(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = short(name);
    out.push(b'S');
    out.extend(long(value));
    out
}

/// A field-table entry `name` whose value is an array holding an array … `levels` deep (5
/// bytes a level), written without recursion.
pub fn nested_entry(name: &[u8], levels: usize) -> Vec<u8> {
    let mut out = short(name);
    for level in 0..levels {
        out.push(b'A');
        let inside = 5 * (levels - 1 - level);
        out.extend((inside as u32).to_be_bytes());
    }
    out
}

/// One connection to the broker on 127.0.0.1:5672 (guest/guest) with a confirm-mode channel.
pub struct RawPublisher {
    socket: TcpStream,
    frame_max: u32,
}

impl RawPublisher {
    pub fn connect(vhost: &str) -> RawPublisher {
        let mut socket = TcpStream::connect("127.0.0.1:5672").unwrap();
        socket.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        let mut this = RawPublisher {
            socket,
            frame_max: 0,
        };
        this.expect(10, 10); // Connection.Start
        let mut start_ok = long(b""); // client properties: an empty table
        start_ok.extend(short(b"PLAIN"));
        start_ok.extend(long(b"\0guest\0guest"));
        start_ok.extend(short(b"en_US"));
        this.method(0, 10, 11, &start_ok);
        let tune = this.expect(10, 30);
        let channel_max = u16::from_be_bytes(tune[11..13].try_into().unwrap());
        this.frame_max = u32::from_be_bytes(tune[13..17].try_into().unwrap());
        let mut tune_ok = channel_max.to_be_bytes().to_vec();
        tune_ok.extend(this.frame_max.to_be_bytes());
        tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
        this.method(0, 10, 31, &tune_ok);
        let mut open = short(vhost.as_bytes());
        open.extend(short(b""));
        open.push(0);
        this.method(0, 10, 40, &open);
        this.expect(10, 41);
        this.method(1, 20, 10, &short(b"")); // Channel.Open
        this.expect(20, 11);
        this.method(1, 85, 10, &[0]); // Confirm.Select
        this.expect(85, 11);
        this
    }

    /// Publishes `body` with `properties` (see [`properties`]) to `exchange` and waits for the
    /// broker's Ack (a Nack fails the test).
    pub fn publish(&mut self, exchange: &str, routing_key: &str, properties: &[u8], body: &[u8]) {
        let mut publish = 0u16.to_be_bytes().to_vec();
        publish.extend(short(exchange.as_bytes()));
        publish.extend(short(routing_key.as_bytes()));
        publish.push(0);
        self.method(1, 60, 40, &publish);
        let mut header = 60u16.to_be_bytes().to_vec();
        header.extend(0u16.to_be_bytes());
        header.extend((body.len() as u64).to_be_bytes());
        header.extend_from_slice(properties);
        self.frame(2, 1, &header);
        for chunk in body.chunks(self.frame_max as usize - 8) {
            self.frame(3, 1, chunk);
        }
        loop {
            let frame = read_frame(&mut self.socket).unwrap();
            assert!(!is_method(&frame, 60, 120), "the broker nacked the message");
            assert!(
                !is_method(&frame, 20, 40) && !is_method(&frame, 10, 50),
                "the broker closed the channel or connection: {}",
                String::from_utf8_lossy(&frame)
            );
            if is_method(&frame, 60, 80) {
                return;
            }
        }
    }

    pub fn close(mut self) {
        let mut close = 200u16.to_be_bytes().to_vec();
        close.extend(short(b"done"));
        close.extend([0, 0, 0, 0]);
        self.method(0, 10, 50, &close);
        self.expect(10, 51);
    }

    fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend(channel.to_be_bytes());
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        self.socket.write_all(&frame).unwrap();
    }

    fn method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend(method.to_be_bytes());
        payload.extend_from_slice(args);
        self.frame(1, channel, &payload);
    }

    /// Reads frames until the method `class`.`method`; returns that frame.
    fn expect(&mut self, class: u16, method: u16) -> Vec<u8> {
        loop {
            let frame = read_frame(&mut self.socket).unwrap();
            if is_method(&frame, class, method) {
                return frame;
            }
            assert!(
                !is_method(&frame, 10, 50),
                "the broker closed the connection: {}",
                String::from_utf8_lossy(&frame)
            );
        }
    }
}
