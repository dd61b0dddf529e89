//! A `PORT` app's public port: a TCP forwarder that passes each connection to the upstream
//! its route names at the moment it is accepted. A switch changes the route: connections
//! accepted after it reach the new instance, open ones finish on the old one (counted, so the
//! runner can drain it). The port never closes during a switch.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::io::{Limits, accept_loop, copy_both_ways};
use super::routes::{RouteKey, Routes};

/// Forwards what `listener` accepts on `port` until `accepting` turns false.
pub async fn serve(
    listener: TcpListener,
    port: u16,
    routes: Arc<Routes>,
    limits: Limits,
    accepting: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let key = RouteKey::Port(port);
    accept_loop(listener, slots, accepting, |inbound, _peer, permit| {
        let Some(in_flight) = routes.enter(&key) else {
            // The route went away between the accept and now: the client sees a reset.
            return;
        };
        tokio::spawn(async move {
            let address = in_flight.target().address;
            if let Ok(outbound) = TcpStream::connect(address).await {
                let _ = outbound.set_nodelay(true);
                copy_both_ways(inbound, outbound, limits.idle).await;
            }
            drop(in_flight);
            drop(permit);
        });
    })
    .await;
}
