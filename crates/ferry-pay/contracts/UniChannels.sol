// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.26;

/// @title UniChannels: unidirectional (Spilman-style) payment channels in the native coin.
/// @notice ferry's settlement contract (shared/design/payments.md sections 0, 4.2, 4.5).
///
/// A sender (the client) escrows a deposit for one receiver (the relay or exit). It then pays
/// off-chain with vouchers: secp256k1 signatures over the *cumulative* amount owed so far. The
/// receiver redeems the newest voucher; the contract pays only `cumulative - claimed`, so a voucher
/// can never be redeemed twice and an older voucher is worth nothing once a newer one was claimed.
///
/// Voucher digest (EIP-191 "personal_sign" of a 32-byte hash):
///   keccak256("\x19Ethereum Signed Message:\n32" ‖ keccak256(abi.encode(block.chainid,
///             address(this), id, cumulative)))
/// so a voucher is bound to one chain, one deployment and one channel id. Signatures are 65
/// bytes r ‖ s ‖ v (v = 27/28, 0/1 accepted too) with s in the lower half of the curve order.
///
/// Amounts are in wei (the chain's base unit); times are block timestamps in seconds.
/// Channel ids are never reused: an id is keccak256(abi.encode(sender, receiver, nonce)) with a
/// per-sender nonce, and a closed channel keeps its record (closed = true) forever.
/// All state changes happen before any value transfer (checks-effects-interactions).
contract UniChannels {
    // Field order packs sender, expiry and closed into one storage slot (3 slots per channel).
    struct Channel {
        address sender;
        uint64 expiry;
        bool closed;
        address receiver;
        uint256 deposit;
        uint256 claimed;
    }

    /// Channel records by id; a never-opened id reads as all zeroes.
    mapping(bytes32 => Channel) public channels;
    /// Number of channels each sender has opened (the next id's nonce).
    mapping(address => uint256) public nonces;

    /// Half the secp256k1 group order: signatures with a larger s are malleable and rejected.
    uint256 private constant HALF_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    event Opened(
        bytes32 indexed id, address indexed sender, address indexed receiver, uint256 deposit, uint64 expiry
    );
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

    /// Opens a channel from msg.sender to `receiver` holding msg.value wei until `expiry`.
    function open(address receiver, uint64 expiry) external payable returns (bytes32 id) {
        if (receiver == address(0) || receiver == msg.sender) revert BadReceiver();
        if (msg.value == 0) revert NoDeposit();
        if (expiry <= block.timestamp) revert BadExpiry();
        uint256 nonce = nonces[msg.sender];
        nonces[msg.sender] = nonce + 1;
        id = keccak256(abi.encode(msg.sender, receiver, nonce));
        // Unreachable with a monotone nonce, kept as a guard: an id is never opened twice.
        if (channels[id].sender != address(0)) revert ChannelClosed();
        channels[id] = Channel({
            sender: msg.sender,
            expiry: expiry,
            closed: false,
            receiver: receiver,
            deposit: msg.value,
            claimed: 0
        });
        emit Opened(id, msg.sender, receiver, msg.value, expiry);
    }

    /// Adds msg.value wei (may be 0) to an open channel and moves its expiry to `newExpiry`,
    /// which must not be earlier than the current expiry. Sender only.
    function topUp(bytes32 id, uint64 newExpiry) external payable {
        Channel storage c = channels[id];
        if (c.sender == address(0)) revert UnknownChannel();
        if (c.closed) revert ChannelClosed();
        if (msg.sender != c.sender) revert NotSender();
        if (newExpiry < c.expiry) revert BadExpiry();
        c.deposit += msg.value;
        c.expiry = newExpiry;
        emit ToppedUp(id, c.deposit, newExpiry);
    }

    /// Pays the receiver `cumulative - claimed` wei for a voucher signed by the sender.
    /// Reverts with NothingToClaim unless `cumulative` exceeds what was already claimed.
    function claim(bytes32 id, uint256 cumulative, bytes calldata sig) external returns (uint256 paid) {
        Channel storage c = channels[id];
        if (c.sender == address(0)) revert UnknownChannel();
        if (c.closed) revert ChannelClosed();
        if (msg.sender != c.receiver) revert NotReceiver();
        if (cumulative > c.deposit) revert OverDeposit();
        if (cumulative <= c.claimed) revert NothingToClaim();
        if (voucherSigner(id, cumulative, sig) != c.sender) revert BadSignature();
        paid = cumulative - c.claimed;
        c.claimed = cumulative;
        emit Claimed(id, cumulative, paid);
        _send(c.receiver, paid);
    }

    /// Closes the channel for good. Receiver only. If `cumulative` exceeds what was claimed, the
    /// voucher must be valid and the difference is paid to the receiver; the rest of the deposit
    /// is refunded to the sender. With `cumulative <= claimed` the signature is not checked.
    function close(bytes32 id, uint256 cumulative, bytes calldata sig)
        external
        returns (uint256 paid, uint256 refunded)
    {
        Channel storage c = channels[id];
        if (c.sender == address(0)) revert UnknownChannel();
        if (c.closed) revert ChannelClosed();
        if (msg.sender != c.receiver) revert NotReceiver();
        if (cumulative > c.deposit) revert OverDeposit();
        uint256 claimed = c.claimed;
        if (cumulative > claimed) {
            if (voucherSigner(id, cumulative, sig) != c.sender) revert BadSignature();
            paid = cumulative - claimed;
            claimed = cumulative;
            c.claimed = cumulative;
        }
        refunded = c.deposit - claimed;
        c.closed = true;
        emit Closed(id, claimed, paid, refunded);
        if (paid > 0) _send(c.receiver, paid);
        if (refunded > 0) _send(c.sender, refunded);
    }

    /// Returns `deposit - claimed` wei to the sender once the channel has expired
    /// (block.timestamp >= expiry) and closes it. Sender only.
    function refund(bytes32 id) external returns (uint256 refunded) {
        Channel storage c = channels[id];
        if (c.sender == address(0)) revert UnknownChannel();
        if (c.closed) revert ChannelClosed();
        if (msg.sender != c.sender) revert NotSender();
        if (block.timestamp < c.expiry) revert NotExpired();
        refunded = c.deposit - c.claimed;
        c.closed = true;
        emit Refunded(id, refunded);
        if (refunded > 0) _send(c.sender, refunded);
    }

    /// The EIP-191 digest a voucher for (`id`, `cumulative`) signs on this chain and contract.
    function voucherDigest(bytes32 id, uint256 cumulative) public view returns (bytes32) {
        bytes32 inner = keccak256(abi.encode(block.chainid, address(this), id, cumulative));
        return keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", inner));
    }

    /// Recovers the voucher's signer; address(0) for a malformed or malleable signature.
    function voucherSigner(bytes32 id, uint256 cumulative, bytes calldata sig) public view returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v < 27) v += 27;
        if (v != 27 && v != 28) return address(0);
        if (uint256(s) > HALF_ORDER) return address(0);
        return ecrecover(voucherDigest(id, cumulative), v, r, s);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }
}
