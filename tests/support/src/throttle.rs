//! A TCP proxy on loopback that forwards to a real server and holds the client's side to a
//! byte rate ([`Throttle`]), so that a test can act while a transfer is under way (interrupt
//! it, change its source), and can cut one connection halfway through a request (a transfer
//! that must be retried). Stopped, with every connection cut, on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Throttle {
    pub addr: SocketAddr,
    cut_pending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Throttle {
    /// Forward connections to `target` (`host:port`); what clients send goes at most
    /// `bytes_per_second`, answers go unthrottled.
    pub fn start(target: &str, bytes_per_second: u64) -> Throttle {
        Self::start_cutting(target, bytes_per_second, None)
    }

    /// [`Throttle::start`], and the first connection whose client has sent more than
    /// `cut_after` bytes is cut there (both ways), once.
    pub fn start_cutting(target: &str, bytes_per_second: u64, cut_after: Option<u64>) -> Throttle {
        let cut_pending = Arc::new(AtomicBool::new(cut_after.is_some()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_string();
        let acceptor = {
            let (stop, open) = (stop.clone(), open.clone());
            let cut = cut_after.map(|after| (after, cut_pending.clone()));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    {
                        let mut o = open.lock().unwrap();
                        o.push(client.try_clone().unwrap());
                        o.push(server.try_clone().unwrap());
                    }
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let cut = cut.clone();
                    std::thread::spawn(move || pump(client, server, Some(bytes_per_second), cut));
                    std::thread::spawn(move || pump(s2, c2, None, None));
                }
            })
        };
        Throttle {
            addr,
            cut_pending,
            stop,
            open,
            acceptor: Some(acceptor),
        }
    }

    /// Whether the connection to cut (`start_cutting`) has been cut.
    pub fn was_cut(&self) -> bool {
        !self.cut_pending.load(Ordering::Relaxed)
    }

    /// `http://ADDR` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Copy `from` to `to` (at most `rate` bytes per second) until either side ends; with `cut`
/// (`(after, pending)`), the first pump to pass `after` bytes while `pending` cuts both ways.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    rate: Option<u64>,
    cut: Option<(u64, Arc<AtomicBool>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n as u64;
        if let Some((after, pending)) = &cut {
            if total > *after && pending.swap(false, Ordering::Relaxed) {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(rate) = rate {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
