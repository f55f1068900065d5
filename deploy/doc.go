// Package deploy holds no code: it is what an operator installs next to
// lockd (a systemd unit, Prometheus alert rules with their unit tests, a
// sample tokens file), and its tests check each against the real tool that
// reads it.
package deploy
