//! A misbehaving HTTP server on a loopback port, for the tests of what pvrfs does with hostile
//! servers (`tests/hostile_*.rs`): each route redirects, sends endless or huge bodies, announces
//! a length it never sends, trickles its body or its headers, or answers plain bytes. Requests
//! are routed by their target, else by its path without the query (S3's presigned URLs).
//! Stops (and lets every connection go) when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does with a request for a path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with these bytes.
    Bytes(Vec<u8>),
    /// 302 to this location.
    Redirect(String),
    /// 200 without a length, then zeros until the client goes away.
    Endless,
    /// 200 announcing `announced` bytes, sends `sent` of them, then holds the connection open.
    Stall { announced: u64, sent: Vec<u8> },
    /// 200 announcing the length of these bytes, sent one byte per `every`.
    Trickle { bytes: Vec<u8>, every: Duration },
    /// 200 announcing this many bytes (nothing is sent).
    Announce(u64),
    /// 200 without a length, then this many zero bytes, then the end.
    Huge(u64),
    /// 200 with these headers (`Name: value\r\n` lines) and these bytes.
    With { headers: String, bytes: Vec<u8> },
    /// The status line and headers one byte per `every`.
    TrickleHeaders { every: Duration },
    /// This status (e.g. `401 Unauthorized`) with these bytes.
    Status { status: String, bytes: Vec<u8> },
}

pub struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<HashMap<String, u32>>>,
    pub sent: Arc<AtomicU64>,
}

impl Server {
    pub fn start(routes: HashMap<String, Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let sent = Arc::new(AtomicU64::new(0));
        let routes = Arc::new(routes);
        let (stop2, hits2, sent2) = (stop.clone(), hits.clone(), sent.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (routes, stop, hits, sent) =
                    (routes.clone(), stop2.clone(), hits2.clone(), sent2.clone());
                std::thread::spawn(move || serve(conn, &routes, &stop, &hits, &sent));
            }
        });
        Server {
            port,
            stop,
            hits,
            sent,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/r", self.port)
    }

    pub fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Server {
    /// `http://127.0.0.1:PORT` (no path).
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    mut conn: TcpStream,
    routes: &HashMap<String, Reply>,
    stop: &AtomicBool,
    hits: &Mutex<HashMap<String, u32>>,
    sent: &AtomicU64,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
    }
    // A route names the request target, or its path without the query.
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let path = if routes.contains_key(&target) {
        target
    } else {
        target.split('?').next().unwrap_or("/").to_string()
    };
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let head =
        |code: &str, extra: &str| format!("HTTP/1.1 {code}\r\n{extra}Connection: close\r\n\r\n");
    let stopped = || stop.load(Ordering::SeqCst);
    let _ = (|| -> std::io::Result<()> {
        match routes.get(&path) {
            None => conn.write_all(head("404 Not Found", "Content-Length: 0\r\n").as_bytes()),
            Some(Reply::Bytes(b)) => {
                conn.write_all(
                    head("200 OK", &format!("Content-Length: {}\r\n", b.len())).as_bytes(),
                )?;
                conn.write_all(b)
            }
            Some(Reply::Redirect(to)) => conn.write_all(
                head(
                    "302 Found",
                    &format!("Location: {to}\r\nContent-Length: 0\r\n"),
                )
                .as_bytes(),
            ),
            Some(Reply::Endless) => {
                conn.write_all(head("200 OK", "").as_bytes())?;
                let chunk = vec![0u8; 64 * 1024];
                while !stopped() {
                    conn.write_all(&chunk)?;
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                Ok(())
            }
            Some(Reply::Stall {
                announced,
                sent: bytes,
            }) => {
                conn.write_all(
                    head("200 OK", &format!("Content-Length: {announced}\r\n")).as_bytes(),
                )?;
                conn.write_all(bytes)?;
                let until = Instant::now() + Duration::from_secs(120);
                while !stopped() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            }
            Some(Reply::Trickle { bytes, every }) => {
                conn.write_all(
                    head("200 OK", &format!("Content-Length: {}\r\n", bytes.len())).as_bytes(),
                )?;
                for b in bytes {
                    if stopped() {
                        break;
                    }
                    conn.write_all(&[*b])?;
                    std::thread::sleep(*every);
                }
                Ok(())
            }
            Some(Reply::Announce(n)) => {
                conn.write_all(head("200 OK", &format!("Content-Length: {n}\r\n")).as_bytes())
            }
            Some(Reply::Huge(n)) => {
                conn.write_all(head("200 OK", "").as_bytes())?;
                let chunk = vec![0u8; 64 * 1024];
                let mut left = *n;
                while left > 0 && !stopped() {
                    let k = left.min(chunk.len() as u64) as usize;
                    conn.write_all(&chunk[..k])?;
                    sent.fetch_add(k as u64, Ordering::SeqCst);
                    left -= k as u64;
                }
                Ok(())
            }
            Some(Reply::With { headers, bytes }) => {
                conn.write_all(
                    head(
                        "200 OK",
                        &format!("{headers}Content-Length: {}\r\n", bytes.len()),
                    )
                    .as_bytes(),
                )?;
                conn.write_all(bytes)
            }
            Some(Reply::Status { status, bytes }) => {
                conn.write_all(
                    head(status, &format!("Content-Length: {}\r\n", bytes.len())).as_bytes(),
                )?;
                conn.write_all(bytes)
            }
            Some(Reply::TrickleHeaders { every }) => {
                let text = "HTTP/1.1 200 OK\r\nX-Slow: ".to_string() + &"a".repeat(10_000);
                for b in text.bytes() {
                    if stopped() {
                        break;
                    }
                    conn.write_all(&[b])?;
                    std::thread::sleep(*every);
                }
                Ok(())
            }
        }
    })();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}
