// Package version says which lockd this is, from what the Go toolchain
// stamped into the binary: the module version (a tag, or "(devel)" for a
// build from a work tree) and the VCS revision it was built from.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Info is what the binary knows about its build.
type Info struct {
	Version   string // module version, "(devel)" when built from a work tree
	Revision  string // VCS revision (with "+dirty" when the tree had changes), or "unknown"
	GoVersion string
}

// Get reads the build's information.
func Get() Info {
	i := Info{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return i
	}
	if v := bi.Main.Version; v != "" {
		i.Version = v
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && i.Revision != "unknown" {
		i.Revision += "+dirty"
	}
	return i
}

// String is the one line `lockd --version` prints.
func (i Info) String() string {
	return fmt.Sprintf("lockd %s (revision %s, %s)", i.Version, i.Revision, i.GoVersion)
}
