package modelroute

import (
	"encoding/binary"
	"math/bits"
)

// Buckets is the number of experiment buckets (0..Buckets-1).
const Buckets = 10000

// Bucket returns the experiment bucket of unitID (a user id, or a request id for
// bucket_by REQUEST) exactly as the server computes it: murmur3 x86 32-bit, seed 0,
// of the UTF-8 bytes of experimentID + "/" + unitID, as unsigned, modulo 10,000.
// Clients use it to predict or log a variant without a round trip.
func Bucket(experimentID, unitID string) int {
	return int(Murmur3x86_32([]byte(experimentID+"/"+unitID), 0) % Buckets)
}

// VariantIndex returns the index of the variant owning bucket, for weights in
// percent (summing to 100): the first i with bucket < (weights[0]+...+weights[i])*100.
// It returns -1 if the weights do not cover the bucket (they sum to less than 100).
func VariantIndex(bucket int, weights []int) int {
	cumulative := 0
	for i, w := range weights {
		cumulative += w * 100
		if bucket < cumulative {
			return i
		}
	}
	return -1
}

// Murmur3x86_32 is MurmurHash3's x86 32-bit variant (public domain, Austin Appleby).
// Implemented here because Debian ships no Go murmur3 package.
func Murmur3x86_32(data []byte, seed uint32) uint32 {
	const c1, c2 = 0xcc9e2d51, 0x1b873593
	h := seed
	n := len(data) / 4 * 4
	for i := 0; i < n; i += 4 {
		k := binary.LittleEndian.Uint32(data[i:])
		k *= c1
		k = bits.RotateLeft32(k, 15)
		k *= c2
		h ^= k
		h = bits.RotateLeft32(h, 13)
		h = h*5 + 0xe6546b64
	}
	var k uint32
	switch tail := data[n:]; len(tail) {
	case 3:
		k ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		k ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		k ^= uint32(tail[0])
		k *= c1
		k = bits.RotateLeft32(k, 15)
		k *= c2
		h ^= k
	}
	h ^= uint32(len(data))
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}
