package erasure

import (
	"encoding/binary"
	"hash/crc32"
)

// ObjectCRC returns the CRC-32C of a whole shard object that Encode or
// Rebuild made (the checksum a store keeps for it), reading only its
// header: the CRC of the header combined with the data CRC the header
// records. For any other object it is only the CRC the header vouches for.
func ObjectCRC(obj []byte) uint32 {
	h := obj[:HeaderSize]
	shardLen := binary.LittleEndian.Uint64(h[16:])
	return crcConcat(crc32.Checksum(h, castagnoli), binary.LittleEndian.Uint32(h[56:]), shardLen)
}

// crcConcat returns the CRC-32C of a||b from crcA of a and crcB of b,
// n = len(b) bytes.
//
// A CRC is the message, as a polynomial over GF(2), times x^32 modulo the
// generator P, with the register's start and final inversions on top; the
// inversions cancel when the two CRCs are XORed, so that
// crc(a||b) = crc(a)·x^(8n) + crc(b) mod P. The polynomials here are in the
// reflected order crc32 uses: bit 31 holds the coefficient of x^0.
func crcConcat(crcA, crcB uint32, n uint64) uint32 {
	return mulModP(crcA, xPow8n(n)) ^ crcB
}

// castagnoliReflected is the Castagnoli generator without its x^32 term,
// reflected.
const castagnoliReflected = 0x82f63b78

// mulModP returns a·b mod P.
func mulModP(a, b uint32) uint32 {
	var p uint32
	for i := 31; i >= 0; i-- { // the coefficient of x^(31-i)
		if a&(1<<i) != 0 {
			p ^= b
		}
		b = mulX(b)
	}
	return p
}

// mulX returns b·x mod P: the x^31 coefficient (bit 0) becomes x^32, which
// is the rest of P.
func mulX(b uint32) uint32 {
	if b&1 != 0 {
		return b>>1 ^ castagnoliReflected
	}
	return b >> 1
}

// xPow8n returns x^(8n) mod P by repeated squaring.
func xPow8n(n uint64) uint32 {
	r := uint32(1) << 31  // x^0
	sq := uint32(1) << 23 // x^8
	for ; n > 0; n >>= 1 {
		if n&1 != 0 {
			r = mulModP(r, sq)
		}
		sq = mulModP(sq, sq)
	}
	return r
}
