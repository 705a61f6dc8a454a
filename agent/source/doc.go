// Package source opens the volume a backup reads: a raw image in a regular
// file or a block device (a CSI snapshot staged for block access). It reports
// the volume's size and, where the filesystem can tell, its holes, so that
// chunking reads only allocated bytes.
package source
