//! One bus's connection and its request/response cycle: one request at a
//! time, the line's silence and the bus's pause before each, a timeout on
//! each (Modbus has no other way to say a device is gone), retries.
//!
//! Before a request, whatever is waiting in the input (a late answer to a
//! timed-out request, line noise) is discarded and counted. After a damaged
//! frame the reader waits for the line to fall silent, so the retry starts on
//! a clean line: that is how RTU framing resynchronises.

use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

use super::config::{BusConfig, Parity, Transport};
use super::frame::{self, Answer, Decoded, FrameError};
use super::validate::silence;

pub trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no response within {0} ms")]
    Timeout(u64),
    #[error("damaged response: {0}")]
    Frame(#[from] FrameError),
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
}

/// Opens the bus's transport.
pub async fn connect(bus: &BusConfig) -> io::Result<Pin<Box<dyn Io>>> {
    let timeout = Duration::from_millis(bus.timeout_ms.max(1000));
    match (bus.transport, &bus.path, &bus.address) {
        (Transport::Rtu, Some(path), _) => {
            let port = tokio_serial::new(path.to_string_lossy(), bus.baud)
                .parity(match bus.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(if bus.data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .stop_bits(if bus.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(io::Error::other)?;
            Ok(Box::pin(port))
        }
        (_, _, Some(address)) => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(Box::pin(stream))
        }
        _ => Err(io::Error::other("bus has neither path nor address")),
    }
}

/// A connected bus.
pub struct Link {
    io: Pin<Box<dyn Io>>,
    rtu: bool,
    /// Silence the line needs before the next request (3.5 characters + pause).
    gap: Duration,
    timeout: Duration,
    last_activity: Instant,
    transaction: u16,
    buf: Vec<u8>,
    /// Bytes discarded since the last call of [`Link::take_discarded`].
    discarded: u64,
    /// Some request got an answer (data or an exception) on this link.
    answered: bool,
}

impl Link {
    pub fn new(io: Pin<Box<dyn Io>>, bus: &BusConfig) -> Link {
        let pause = Duration::from_millis(bus.pause_ms);
        Link {
            io,
            rtu: bus.is_rtu(),
            gap: if bus.is_rtu() {
                silence(bus) + pause
            } else {
                pause
            },
            timeout: Duration::from_millis(bus.timeout_ms),
            last_activity: Instant::now(),
            transaction: 0,
            buf: Vec::with_capacity(512),
            discarded: 0,
            answered: false,
        }
    }

    /// Whether any request got an answer on this link.
    pub fn answered(&self) -> bool {
        self.answered
    }

    pub fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }

    /// One read request and its answer (an exception is an answer).
    pub async fn read(
        &mut self,
        unit: u8,
        function: u8,
        start: u16,
        count: u16,
    ) -> Result<Answer, RequestError> {
        tokio::time::sleep_until((self.last_activity + self.gap).into()).await;
        self.drain_input()?;
        self.transaction = self.transaction.wrapping_add(1);
        let request = if self.rtu {
            frame::rtu_request(unit, function, start, count)
        } else {
            frame::tcp_request(self.transaction, unit, function, start, count)
        };
        self.io.write_all(&request).await?;
        self.io.flush().await?;
        let expected = frame::data_len(function, count);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = self.receive(unit, function, expected, deadline).await;
        if let Err(RequestError::Frame(_)) = &result {
            self.await_silence(deadline).await?;
        }
        self.last_activity = Instant::now();
        self.answered |= result.is_ok();
        result
    }

    async fn receive(
        &mut self,
        unit: u8,
        function: u8,
        expected: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, RequestError> {
        self.buf.clear();
        let mut chunk = [0u8; 512];
        loop {
            loop {
                let decoded = if self.rtu {
                    frame::rtu_decode(&self.buf, unit, function, expected)
                } else {
                    frame::tcp_decode(&self.buf, self.transaction, unit, function, expected)
                };
                match decoded? {
                    Decoded::Partial => break,
                    Decoded::Skip(n) => {
                        self.buf.drain(..n);
                        self.discarded += n as u64;
                    }
                    Decoded::Done(answer, _) => return Ok(answer),
                }
            }
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut chunk))
                .await
                .map_err(|_| RequestError::Timeout(self.timeout.as_millis() as u64))??;
            if n == 0 {
                return Err(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the peer").into(),
                );
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// After a damaged frame: read until the line has been silent for the
    /// gap (or the request's deadline passed), dropping what arrives.
    async fn await_silence(&mut self, deadline: tokio::time::Instant) -> io::Result<()> {
        let mut chunk = [0u8; 512];
        let quiet = self.gap.max(Duration::from_millis(2));
        loop {
            let until = (tokio::time::Instant::now() + quiet).min(deadline);
            match tokio::time::timeout_at(until, self.io.read(&mut chunk)).await {
                Err(_) => return Ok(()),
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.discarded += n as u64,
                Ok(Err(e)) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// Discards what is already waiting, without waiting for more.
    fn drain_input(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 512];
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            let mut read_buf = tokio::io::ReadBuf::new(&mut chunk);
            match self.io.as_mut().poll_read(&mut cx, &mut read_buf) {
                std::task::Poll::Ready(Ok(())) if read_buf.filled().is_empty() => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                std::task::Poll::Ready(Ok(())) => self.discarded += read_buf.filled().len() as u64,
                std::task::Poll::Ready(Err(e)) => return Err(e),
                std::task::Poll::Pending => return Ok(()),
            }
        }
    }
}
