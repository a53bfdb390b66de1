//! ABI bindings of `contracts/UniChannels.sol` and its committed initcode (payments.md §4.5).

use alloy_primitives::Bytes;
use alloy_sol_types::{SolInterface, sol};

use crate::PayError;

/// Initcode (hex) of `UniChannels.sol` compiled by solc 0.8.26 (optimizer 200 runs, EVM cancun,
/// no metadata hash); `scripts/check-contract` verifies it in CI.
pub const UNI_CHANNELS_INITCODE_HEX: &str = include_str!("../contracts/UniChannels.bin");

/// The committed ABI of `UniChannels.sol` (JSON), for JSON-RPC tooling.
pub const UNI_CHANNELS_ABI_JSON: &str = include_str!("../contracts/UniChannels.abi.json");

/// The initcode as bytes.
pub fn initcode() -> Result<Bytes, PayError> {
    hex::decode(UNI_CHANNELS_INITCODE_HEX.trim())
        .map(Bytes::from)
        .map_err(|e| PayError::Decode(format!("committed initcode: {e}")))
}

sol! {
    /// The external interface of `UniChannels.sol` (amounts in wei, times in seconds).
    #[derive(Debug, PartialEq, Eq)]
    interface IUniChannels {
        event Opened(bytes32 indexed id, address indexed sender, address indexed receiver, uint256 deposit, uint64 expiry);
        event ToppedUp(bytes32 indexed id, uint256 deposit, uint64 expiry);
        event Claimed(bytes32 indexed id, uint256 cumulative, uint256 paid);
        event Closed(bytes32 indexed id, uint256 cumulative, uint256 paid, uint256 refunded);
        event Refunded(bytes32 indexed id, uint256 refunded);

        error BadReceiver();
        error NoDeposit();
        error BadExpiry();
        error UnknownChannel();
        error ChannelClosed();
        error NotSender();
        error NotReceiver();
        error NothingToClaim();
        error OverDeposit();
        error BadSignature();
        error NotExpired();
        error TransferFailed();

        function open(address receiver, uint64 expiry) external payable returns (bytes32 id);
        function topUp(bytes32 id, uint64 newExpiry) external payable;
        function claim(bytes32 id, uint256 cumulative, bytes sig) external returns (uint256 paid);
        function close(bytes32 id, uint256 cumulative, bytes sig) external returns (uint256 paid, uint256 refunded);
        function refund(bytes32 id) external returns (uint256 refunded);
        function channels(bytes32 id) external view returns (address sender, uint64 expiry, bool closed, address receiver, uint256 deposit, uint256 claimed);
        function nonces(address sender) external view returns (uint256);
        function voucherDigest(bytes32 id, uint256 cumulative) external view returns (bytes32);
        function voucherSigner(bytes32 id, uint256 cumulative, bytes sig) external view returns (address);
    }
}

/// Why the channel contract refused a call: its custom errors (payments.md §4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContractError {
    /// `open`: receiver is zero or the sender itself.
    BadReceiver,
    /// `open`: no value sent.
    NoDeposit,
    /// `open`: expiry not in the future; `topUp`: expiry would shrink.
    BadExpiry,
    /// No channel with this id was ever opened.
    UnknownChannel,
    /// The channel is closed (closed ids stay closed forever).
    ChannelClosed,
    /// Only the channel's sender may do this.
    NotSender,
    /// Only the channel's receiver may do this.
    NotReceiver,
    /// `claim`: the voucher's cumulative is not above what was already claimed.
    NothingToClaim,
    /// The voucher's cumulative exceeds the deposit.
    OverDeposit,
    /// The voucher is not signed by the channel's sender (for this chain, contract and id).
    BadSignature,
    /// `refund` before the channel's expiry.
    NotExpired,
    /// A value transfer to the receiver or sender failed.
    TransferFailed,
    /// Revert data that is none of the above (raw bytes).
    Other(Bytes),
}

impl ContractError {
    /// Decodes revert data returned by the contract.
    pub fn from_revert_data(data: &[u8]) -> Self {
        use IUniChannels::IUniChannelsErrors as E;
        match E::abi_decode(data) {
            Ok(E::BadReceiver(_)) => Self::BadReceiver,
            Ok(E::NoDeposit(_)) => Self::NoDeposit,
            Ok(E::BadExpiry(_)) => Self::BadExpiry,
            Ok(E::UnknownChannel(_)) => Self::UnknownChannel,
            Ok(E::ChannelClosed(_)) => Self::ChannelClosed,
            Ok(E::NotSender(_)) => Self::NotSender,
            Ok(E::NotReceiver(_)) => Self::NotReceiver,
            Ok(E::NothingToClaim(_)) => Self::NothingToClaim,
            Ok(E::OverDeposit(_)) => Self::OverDeposit,
            Ok(E::BadSignature(_)) => Self::BadSignature,
            Ok(E::NotExpired(_)) => Self::NotExpired,
            Ok(E::TransferFailed(_)) => Self::TransferFailed,
            Err(_) => Self::Other(Bytes::copy_from_slice(data)),
        }
    }
}

impl std::fmt::Display for ContractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(data) => write!(f, "revert 0x{}", hex::encode(data)),
            other => write!(f, "{other:?}"),
        }
    }
}
