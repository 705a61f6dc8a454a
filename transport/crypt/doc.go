// Package crypt holds the repository's secrets and seals its objects.
//
// A repository has one random master key: 32 bytes for AES-256-GCM and 32
// bytes for the HMAC that names chunks. Sealed data is
//
//	nonce (12 random bytes) || AES-256-GCM ciphertext || tag (16 bytes)
//
// with associated data that binds each object to its kind (and a blob to its
// chunk ID), so one sealed object cannot be passed off as another.
//
// The master key is stored in key objects (keys/<id> on every target), JSON:
//
//	{"version":1,"kdf":"scrypt","n":32768,"r":8,"p":1,"salt":"<base64>","data":"<base64 sealed key>","created":"..."}
//
// where data is the master key sealed with the key scrypt derives from the
// password. Several key objects may exist (one per password); any opens it.
package crypt
