//! Per-parent-port listeners (transparent serving): one listening socket for every port that
//! meshroute's EndpointSlices name, bound on the IP of `--listen`. kube-proxy sends a client's
//! `http://smiley/` to one of these ports, so a connection's local port names its parent port
//! ([`crate::table::RouteTable::parent_for_local_port`]) and no `Host` is needed.
//!
//! The set of ports comes from the published tables (every replica reads the slices, so
//! followers learn the allocation from them, not from the leader). Ports no longer named are
//! closed; a port that cannot be bound (in use) is retried every second.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// The set of listener ports to serve, as the source publishes it.
pub type PortSet = Arc<BTreeSet<u16>>;

/// The per-parent-port listeners of one replica.
pub struct ParentListeners {
    ip: IpAddr,
    ports: watch::Receiver<PortSet>,
    bound: BTreeMap<u16, TcpListener>,
    /// Named ports that could not be bound yet.
    failed: BTreeSet<u16>,
    /// Where the next accept scan starts, so no port starves the others.
    next: usize,
    closed: bool,
}

impl ParentListeners {
    /// Listeners on `ip` for every port `ports` names, now and later.
    pub fn new(ip: IpAddr, ports: watch::Receiver<PortSet>) -> Self {
        let mut me = ParentListeners {
            ip,
            ports,
            bound: BTreeMap::new(),
            failed: BTreeSet::new(),
            next: 0,
            closed: false,
        };
        me.sync();
        me
    }

    /// The ports listened on now.
    pub fn listening(&self) -> Vec<u16> {
        self.bound.keys().copied().collect()
    }

    /// Bind what is newly named, close what is no longer named.
    fn sync(&mut self) {
        let want = self.ports.borrow_and_update().clone();
        self.bound.retain(|p, _| want.contains(p));
        self.failed.retain(|p| want.contains(p));
        for &port in want.iter() {
            if self.bound.contains_key(&port) {
                continue;
            }
            match bind(SocketAddr::new(self.ip, port)) {
                Ok(l) => {
                    if self.failed.remove(&port) {
                        tracing::info!(port, "parent port listener bound");
                    }
                    self.bound.insert(port, l);
                }
                Err(e) => {
                    if self.failed.insert(port) {
                        tracing::warn!(ip = %self.ip, port, error = %e, "cannot listen on a parent port named in meshroute's EndpointSlices; retrying every second");
                    }
                }
            }
        }
        tracing::debug!(ports = ?self.listening(), "parent port listeners");
    }

    /// The next connection on any parent port, with the port it came in on.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, u16)> {
        loop {
            let retry = !self.failed.is_empty();
            let (bound, next) = (&self.bound, &mut self.next);
            tokio::select! {
                r = self.ports.changed(), if !self.closed => {
                    if r.is_err() {
                        // The source is gone: keep what is bound.
                        self.closed = true;
                    }
                    self.sync();
                }
                () = tokio::time::sleep(Duration::from_secs(1)), if retry => self.sync(),
                a = std::future::poll_fn(|cx| poll_any(bound, next, cx)) => return a,
            }
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the main listener: a restarted replica rebinds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn poll_any(
    bound: &BTreeMap<u16, TcpListener>,
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<(TcpStream, u16)>> {
    let n = bound.len();
    if n == 0 {
        return Poll::Pending;
    }
    let start = *next % n;
    for (i, (port, l)) in bound.iter().cycle().skip(start).take(n).enumerate() {
        if let Poll::Ready(r) = l.poll_accept(cx) {
            *next = start + i + 1;
            return Poll::Ready(r.map(|(s, _)| (s, *port)));
        }
    }
    Poll::Pending
}
