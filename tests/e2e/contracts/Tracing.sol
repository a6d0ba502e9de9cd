// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.30;

// Contracts for the tracing differential test (test_trace_anvil.py): call shapes a tracer must get
// right besides plain transfers and the pair's swap.

/// A chain of calls: each relay calls the next with one hop more, and each hop logs.
contract Relay {
    event Hop(uint256 depth);

    uint256 public hops;

    function relay(Relay[] calldata next, uint256 depth) external returns (uint256) {
        hops += 1;
        emit Hop(depth);
        if (next.length == 0) {
            return depth;
        }
        return next[0].relay(next[1:], depth + 1);
    }
}

contract Thrower {
    function boom(uint256 x) external pure returns (uint256) {
        require(x < 10, "too big");
        return x;
    }
}

/// A reverting call inside a transaction that succeeds.
contract Catcher {
    uint256 public caught;

    function tryBoom(Thrower thrower, uint256 x) external returns (bool ok) {
        try thrower.boom(x) returns (uint256) {
            ok = true;
        } catch {
            caught += 1;
        }
    }
}

contract Child {
    uint256 public value;

    constructor(uint256 v) payable {
        value = v;
    }

    function destroy(address payable to) external {
        selfdestruct(to);
    }
}

/// CREATE2, and a child created and destroyed in one transaction (since Cancun, EIP-6780, the
/// only self-destruct that deletes an account).
contract Factory {
    event Deployed(address child);

    function deploy(bytes32 salt, uint256 v) external payable returns (address child) {
        child = address(new Child{salt: salt, value: msg.value}(v));
        emit Deployed(child);
    }

    function deployAndDestroy(bytes32 salt, address payable to) external payable returns (address) {
        Child child = new Child{salt: salt, value: msg.value}(1);
        child.destroy(to);
        return address(child);
    }
}
