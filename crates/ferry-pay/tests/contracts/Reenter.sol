// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.26;

/// Test-only attacker for ferry-pay's reentrancy test: a channel receiver (or sender) contract
/// whose receive() calls back into UniChannels while it is being paid, trying to be paid twice.
interface IUniChannelsLike {
    function open(address receiver, uint64 expiry) external payable returns (bytes32 id);
    function claim(bytes32 id, uint256 cumulative, bytes calldata sig) external returns (uint256 paid);
    function close(bytes32 id, uint256 cumulative, bytes calldata sig)
        external
        returns (uint256 paid, uint256 refunded);
    function refund(bytes32 id) external returns (uint256 refunded);
}

contract Reenter {
    IUniChannelsLike public immutable hub;
    bytes32 public id;
    uint256 public cumulative;
    bytes public sig;
    /// 0 idle, 1 claim, 2 close, 3 refund.
    uint8 public mode;
    uint256 public reentries;
    uint256 public reentrySuccesses;

    constructor(IUniChannelsLike h) {
        hub = h;
    }

    function attackClaim(bytes32 i, uint256 c, bytes calldata s) external {
        (id, cumulative, sig, mode) = (i, c, s, 1);
        hub.claim(i, c, s);
        mode = 0;
    }

    function attackClose(bytes32 i, uint256 c, bytes calldata s) external {
        (id, cumulative, sig, mode) = (i, c, s, 2);
        hub.close(i, c, s);
        mode = 0;
    }

    function openAsSender(address receiver, uint64 expiry) external payable returns (bytes32) {
        return hub.open{value: msg.value}(receiver, expiry);
    }

    function attackRefund(bytes32 i) external {
        (id, mode) = (i, 3);
        hub.refund(i);
        mode = 0;
    }

    receive() external payable {
        if (mode == 0 || reentries >= 3) return;
        reentries++;
        if (mode == 3) {
            try hub.refund(id) returns (uint256) {
                reentrySuccesses++;
            } catch {}
        } else {
            try hub.claim(id, cumulative, sig) returns (uint256) {
                reentrySuccesses++;
            } catch {}
            try hub.close(id, cumulative, sig) returns (uint256, uint256) {
                reentrySuccesses++;
            } catch {}
        }
    }
}
