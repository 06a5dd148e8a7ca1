//! The rtnetlink requests the pod network needs, on a connection bound to one network namespace.
//!
//! A netlink socket stays in the namespace it was created in, so a connection made on a thread
//! that entered a pod's namespace configures that pod from any task afterwards.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoVeth, LinkAttribute, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
};

use crate::netns;

/// `rtm_protocol` of every route the agent installs, so that it can find (and remove) its own
/// routes and nothing else. Values above 200 are free for local use (see `/etc/iproute2/rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 201;

/// Errors from a netlink request; `op` says what was asked. Retryable only if the cause was a
/// device vanishing under the request (a pod torn down concurrently).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {op}")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening a netlink socket in {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] netns::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The errno of a failed netlink request, if the kernel sent one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

fn request(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Request { op, source }
}

/// A link as the pod network needs it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Address(mac) if mac.len() == 6 => link.mac.copy_from_slice(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                _ => {}
            }
        }
        link
    }
}

/// A netlink connection inside one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Connects inside the namespace at `netns` (`None`: the caller's). Must run within a tokio
    /// runtime, which drives the connection.
    pub fn connect(netns: Option<&Path>) -> Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let connect_err = |source| Error::Connect {
            path: netns.map_or_else(
                || "the agent's namespace".to_owned(),
                |p| p.display().to_string(),
            ),
            source,
        };
        // The socket is created (and registered with the runtime's reactor) in the namespace.
        let (connection, handle, _) = netns::run_in_optional(netns, || {
            let _runtime = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(connect_err)?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// The link named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request(format!("get link {name}"))(e)),
        }
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let found = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        match found {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request(format!("get link {index}"))(e)),
        }
    }

    /// The first link holding the address `ip`.
    pub async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<Link>> {
        let mut addresses = self.handle.address().get().execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(request("list addresses"))?
        {
            let holds = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == ip));
            if holds {
                return self.link_by_index(msg.header.index).await;
            }
        }
        Ok(None)
    }

    /// Creates the veth pair `name` ↔ `peer` with `mtu` on both ends, `peer` right in the
    /// namespace open as `netns_fd`: moving a link between namespaces afterwards waits for RCU
    /// grace periods, which dominated the pod network's setup time.
    pub async fn add_veth_into(
        &self,
        name: &str,
        peer: &str,
        netns_fd: i32,
        mtu: u32,
    ) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(netns_fd)
            .build();
        self.handle
            .link()
            .add(
                LinkVeth::new(name, peer)
                    .mtu(mtu)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!(
                "add veth {name} (peer {peer} in the pod's namespace)"
            )))
    }

    /// Moves link `name` into the namespace open as `netns_fd`.
    pub async fn move_to_netns(&self, name: &str, netns_fd: i32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_name(name)
                    .setns_by_fd(netns_fd)
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!("move {name} to the pod's namespace")))
    }

    /// Renames link `index` (which must be down) to `name`.
    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_owned())
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!("rename link {index} to {name}")))
    }

    /// Sets `mtu` on link `index` and brings it up.
    pub async fn set_up(&self, index: u32, mtu: Option<u32>) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(request(format!("set link {index} up")))
    }

    /// Deletes link `index` (a veth takes its peer along); `false` if it was gone already.
    pub async fn delete_link(&self, index: u32) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(request(format!("delete link {index}"))(e)),
        }
    }

    /// Gives link `index` the address `ip/prefix_len` (kept if present).
    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(request(format!("add address {ip}/{prefix_len}")))
    }

    /// A permanent neighbour entry `ip` → `mac` on link `index` (replaced if present).
    pub async fn set_permanent_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(request(format!("add neighbour {ip} on link {index}")))
    }

    /// The link-layer address of neighbour `ip` on link `index`, if there is an entry.
    pub async fn neighbour_mac(&self, index: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(msg) = neighbours
            .try_next()
            .await
            .map_err(request("list neighbours"))?
        {
            if msg.header.ifindex == index && neighbour_ip(&msg) == Some(ip) {
                let mac = msg.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(mac) if mac.len() == 6 => {
                        let mut out = [0; 6];
                        out.copy_from_slice(mac.as_slice());
                        Some(out)
                    }
                    _ => None,
                });
                return Ok(mac);
            }
        }
        Ok(None)
    }

    /// Routes `dst/prefix_len` out of link `index`, via `gateway` if given, tagged as the agent's
    /// (replacing an existing route to the same prefix).
    pub async fn replace_route(
        &self,
        dst: Ipv4Addr,
        prefix_len: u8,
        index: u32,
        gateway: Option<Ipv4Addr>,
        onlink: bool,
    ) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        builder = match gateway {
            Some(gw) => builder.gateway(gw),
            None => builder.scope(RouteScope::Link),
        };
        if onlink {
            builder = builder.onlink();
        }
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(request(format!("add route {dst}/{prefix_len}")))
    }

    /// The IPv4 routes of the main table the agent installed (see [`ROUTE_PROTOCOL`]).
    pub async fn agent_routes(&self) -> Result<Vec<AgentRoute>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        let mut ours = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(request("list routes"))? {
            if msg.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL) {
                ours.push(AgentRoute::from_message(msg));
            }
        }
        Ok(ours)
    }

    /// Deletes a route returned by [`Netlink::agent_routes`]; `false` if it was gone already.
    pub async fn delete_route(&self, route: AgentRoute) -> Result<bool> {
        let what = format!("delete route {}/{}", route.dst, route.prefix_len);
        match self.handle.route().del(route.message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(request(what)(e)),
        }
    }
}

/// A route the agent installed.
#[derive(Clone, Debug)]
pub struct AgentRoute {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    message: RouteMessage,
}

impl AgentRoute {
    fn from_message(message: RouteMessage) -> Self {
        let mut route = AgentRoute {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: message.header.destination_prefix_length,
            gateway: None,
            oif: None,
            message: message.clone(),
        };
        for attr in &message.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
                RouteAttribute::Oif(index) => route.oif = Some(*index),
                _ => {}
            }
        }
        route
    }
}

fn neighbour_ip(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}
