// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.30;

import "./Token.sol";

/// A Uniswap-V2-style constant-product pair for Kestrel's benchmarks and load tests: the same
/// storage layout idea (token0, token1, packed reserves) and the same x*y=k swap with a 0.3% fee,
/// without the router: `swap` pulls the input token from the caller (who approved the pair) and
/// sends the output token, in one transaction.
contract Pair {
    Token public token0;
    Token public token1;
    uint112 private reserve0;
    uint112 private reserve1;
    uint32 private blockTimestampLast;

    event Swap(
        address indexed sender,
        uint256 amount0In,
        uint256 amount1In,
        uint256 amount0Out,
        uint256 amount1Out,
        address indexed to
    );
    event Sync(uint112 reserve0, uint112 reserve1);

    constructor(Token token0_, Token token1_) {
        token0 = token0_;
        token1 = token1_;
    }

    function getReserves() external view returns (uint112, uint112, uint32) {
        return (reserve0, reserve1, blockTimestampLast);
    }

    /// Records the pair's token balances as its reserves (after tokens were sent to it).
    function sync() external {
        _update(token0.balanceOf(address(this)), token1.balanceOf(address(this)));
    }

    function swap(uint256 amountIn, bool zeroForOne, address to) external returns (uint256 amountOut) {
        (Token tokenIn, Token tokenOut) = zeroForOne ? (token0, token1) : (token1, token0);
        (uint256 reserveIn, uint256 reserveOut) =
            zeroForOne ? (uint256(reserve0), uint256(reserve1)) : (uint256(reserve1), uint256(reserve0));
        require(tokenIn.transferFrom(msg.sender, address(this), amountIn), "transfer in failed");
        uint256 amountInWithFee = amountIn * 997;
        amountOut = (amountInWithFee * reserveOut) / (reserveIn * 1000 + amountInWithFee);
        require(amountOut > 0, "insufficient output");
        require(tokenOut.transfer(to, amountOut), "transfer out failed");
        if (zeroForOne) {
            _update(reserveIn + amountIn, reserveOut - amountOut);
            emit Swap(msg.sender, amountIn, 0, 0, amountOut, to);
        } else {
            _update(reserveOut - amountOut, reserveIn + amountIn);
            emit Swap(msg.sender, 0, amountIn, amountOut, 0, to);
        }
    }

    function _update(uint256 balance0, uint256 balance1) private {
        require(balance0 <= type(uint112).max && balance1 <= type(uint112).max, "overflow");
        reserve0 = uint112(balance0);
        reserve1 = uint112(balance1);
        blockTimestampLast = uint32(block.timestamp);
        emit Sync(reserve0, reserve1);
    }
}
