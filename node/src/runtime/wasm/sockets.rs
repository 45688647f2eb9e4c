//! A guest's sockets belong to its pod's network. A socket is the namespace's of the thread
//! that makes it, and guests run on the agent's own threads: wasmtime-wasi's
//! `create-tcp-socket` and `create-udp-socket` are replaced by wrappers that make the same
//! calls with the thread inside the pod's namespace for that moment. (The other ways a guest
//! reaches the network make their sockets there too: outgoing wasi:http requests in
//! `outgoing`, name lookups in `dns::lookup`, a served component's listener in
//! `WasmRuntime::start`; a socket a listener accepts is its listener's.)

use std::sync::Arc;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi::WasiView;

use crate::sandbox::netns::Netns;

/// The version wasmtime-wasi 48 defines (older imports match it).
const VERSION: &str = "0.2.12";

/// Store data of a guest that knows its pod's namespace (none: the node's network).
pub trait PodSockets: WasiView + Send {
    fn netns(&self) -> Option<Arc<Netns>>;
}

/// A socket call's result as the guest gets it: its error code, or a trap for anything
/// else.
fn lowered<T>(made: SocketResult<T>) -> wasmtime::Result<Result<T, ErrorCode>> {
    match made {
        Ok(socket) => Ok(Ok(socket)),
        Err(e) => Ok(Err(e.downcast()?)),
    }
}

/// The namespace could not be entered: the guest gets no socket (never one of the node's).
fn refused(e: &std::io::Error) -> ErrorCode {
    tracing::warn!(error = %e, "cannot enter a pod's network namespace to make a guest's socket");
    ErrorCode::AccessDenied
}

/// Puts the pod-namespace socket constructors in place of wasmtime-wasi's in `linker`
/// (after wasmtime-wasi's own interfaces are added).
pub fn add_to_linker<T: PodSockets + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let tcp = format!("wasi:sockets/tcp-create-socket@{VERSION}");
    linker.instance(&tcp)?.func_wrap(
        "create-tcp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            let host = store.data_mut();
            let netns = host.netns();
            let mut view = host.sockets();
            let mut make = || tcp_create_socket::Host::create_tcp_socket(&mut view, family);
            let made = match netns {
                None => make(),
                Some(ns) => match ns.run(make) {
                    Ok(made) => made,
                    Err(e) => return Ok((Err::<Resource<TcpSocket>, _>(refused(&e)),)),
                },
            };
            Ok((lowered(made)?,))
        },
    )?;
    let udp = format!("wasi:sockets/udp-create-socket@{VERSION}");
    linker.instance(&udp)?.func_wrap_async(
        "create-udp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                let host = store.data_mut();
                let netns = host.netns();
                let mut view = host.sockets();
                let make = Box::pin(udp_create_socket::Host::create_udp_socket(
                    &mut view, family,
                ));
                let made = match netns {
                    None => make.await,
                    Some(ns) => match ns.polled(make).await {
                        Ok(made) => made,
                        Err(e) => return Ok((Err::<Resource<UdpSocket>, _>(refused(&e)),)),
                    },
                };
                Ok((lowered(made)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
