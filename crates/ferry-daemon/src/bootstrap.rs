//! Bootstrap nodes: the `IP:PORT:DHT_PUBLIC_KEY_HEX` syntax and the embedded default list.
//!
//! The default list is taken from the Tox project's public node list (nodes.tox.chat JSON, scan
//! of 2024-11-22, as shipped in qTox's `res/nodes.json`): public nodes with a numeric IPv4
//! address that were up at that scan and whose key has been stable across earlier snapshots.
//! With it, `ferry up` joins the real Tox network with no configuration. Nodes come and go;
//! a node that is gone only costs one unanswered request.

use std::net::SocketAddr;
use std::str::FromStr;

use ferry_crypto::PublicKey;

/// A bootstrap node: UDP address and DHT public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootstrapNode {
    /// UDP address.
    pub addr: SocketAddr,
    /// DHT public key.
    pub public_key: PublicKey,
}

/// Why a bootstrap node string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapParseError {
    /// No `:KEY` part.
    #[error("expected IP:PORT:DHT_PUBLIC_KEY_HEX (IPv6 as [IP]:PORT:KEY), got {0:?}")]
    Syntax(String),
    /// The address part does not parse.
    #[error("bad address {0:?} (expected IP:PORT, IPv6 as [IP]:PORT)")]
    Address(String),
    /// The key is not 64 hex characters.
    #[error("bad DHT public key: {0}")]
    Key(String),
}

impl FromStr for BootstrapNode {
    type Err = BootstrapParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, key) = s
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| BootstrapParseError::Syntax(s.to_string()))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| BootstrapParseError::Address(addr.to_string()))?;
        let public_key =
            PublicKey::from_hex(key).map_err(|e| BootstrapParseError::Key(e.to_string()))?;
        Ok(Self { addr, public_key })
    }
}

/// `(address, DHT public key, maintainer)` of the embedded public Tox bootstrap nodes.
pub const DEFAULT_NODES: &[(&str, &str, &str)] = &[
    (
        "144.217.167.73:33445",
        "7E5668E0EE09E19F320AD47902419331FFEE147BB3606769CFBE921A2A2FD34C",
        "velusip",
    ),
    (
        "205.185.115.131:53",
        "3091C6BEB2A993F1C6300C16549FABA67098FF3D62C6D253828B531470B53D68",
        "GDR!",
    ),
    (
        "172.105.109.31:33445",
        "D46E97CF995DC1820B92B7D899E152A217D36ABE22730FEA4B6BF1BFC06C617C",
        "amr",
    ),
    (
        "172.104.215.182:33445",
        "DA2BD927E01CD05EBCC2574EBE5BEBB10FF59AE0B2105A7D1E2B40E49BB20239",
        "zero-one",
    ),
    (
        "139.162.110.188:33445",
        "F76A11284547163889DDC89A7738CF271797BF5E5E220643E97AD3C7E7903D55",
        "ToxTom",
    ),
    (
        "188.214.122.30:33445",
        "2A9F7A620581D5D1B09B004624559211C5ED3D1D712E8066ACDB0896A7335705",
        "turambar",
    ),
    (
        "95.181.230.108:33445",
        "B5FFECB4E4C26409EBB88DB35793E7B39BFA3BA12AC04C096950CB842E3E130A",
        "wdwp",
    ),
    (
        "43.198.227.166:33445",
        "AD13AB0D434BCE6C83FE2649237183964AE3341D0AFB3BE1694B18505E4E135E",
        "Hardy",
    ),
    (
        "3.0.24.15:33445",
        "E20ABCF38CDBFFD7D04B29C956B33F7B27A3BB7AF0618101617B036E4AEA402D",
        "Hardy",
    ),
    (
        "188.225.9.167:33445",
        "1911341A83E02503AB1FD6561BD64AF3A9D6C3F12B5FBB656976B2E678644A67",
        "Nikat",
    ),
];

/// The embedded default bootstrap nodes, parsed.
pub fn default_nodes() -> Vec<BootstrapNode> {
    DEFAULT_NODES
        .iter()
        .filter_map(|(addr, key, _)| format!("{addr}:{key}").parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_parses_whole() {
        assert_eq!(default_nodes().len(), DEFAULT_NODES.len());
    }

    #[test]
    fn syntax() {
        let k = "7E5668E0EE09E19F320AD47902419331FFEE147BB3606769CFBE921A2A2FD34C";
        let n: BootstrapNode = format!("127.0.0.1:33445:{k}").parse().expect("v4");
        assert_eq!(n.addr.port(), 33445);
        let n: BootstrapNode = format!("[::1]:1:{}", k.to_lowercase()).parse().expect("v6");
        assert!(n.addr.is_ipv6());
        assert!(matches!(
            "nonsense".parse::<BootstrapNode>(),
            Err(BootstrapParseError::Syntax(_))
        ));
        assert!(matches!(
            format!("1.2.3:1:{k}").parse::<BootstrapNode>(),
            Err(BootstrapParseError::Address(_))
        ));
        assert!(matches!(
            "127.0.0.1:1:abcd".parse::<BootstrapNode>(),
            Err(BootstrapParseError::Key(_))
        ));
    }
}
