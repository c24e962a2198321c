package nodesetup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// The CRI plugin's IDs: config version 2 and earlier keep the registry
// settings under the first, version 3 (containerd 2.x) under the second.
const (
	criV2 = "io.containerd.grpc.v1.cri"
	criV3 = "io.containerd.cri.v1.images"
)

// Warnings reads containerd's config file and says, one line each, why
// containerd's CRI plugin (what the kubelet uses) would not read the host
// files under hostsDir: no config file, no config_path, config_path under
// the other version's plugin ID, config_path a list or another directory,
// inline registry mirrors (containerd then ignores config_path). ctr with
// --hosts-dir reads them whatever the config says.
func Warnings(configPath, hostsDir string) []string {
	b, err := os.ReadFile(configPath)
	if errors.Is(err, fs.ErrNotExist) {
		return []string{fmt.Sprintf("containerd config %s not found: without config_path the CRI plugin (the kubelet's pulls) does not read %s", configPath, hostsDir)}
	}
	if err != nil {
		return []string{fmt.Sprintf("containerd config %s: %v", configPath, err)}
	}
	var cfg map[string]any
	if err := toml.Unmarshal(b, &cfg); err != nil {
		return []string{fmt.Sprintf("containerd config %s: %v", configPath, err)}
	}
	version := 1
	switch v := cfg["version"].(type) {
	case int64:
		version = int(v)
	case float64:
		version = int(v)
	}
	plugins, _ := cfg["plugins"].(map[string]any)
	registryOf := func(id string) map[string]any {
		p, _ := plugins[id].(map[string]any)
		r, _ := p["registry"].(map[string]any)
		return r
	}
	want, other := criV2, criV3
	if version >= 3 {
		want, other = criV3, criV2
	}
	var out []string
	reg := registryOf(want)
	if r := registryOf(other); r != nil && r["config_path"] != nil {
		out = append(out, fmt.Sprintf("config_path is under [plugins.%q.registry], which a version %d config does not read: move it to [plugins.%q.registry]", other, version, want))
	}
	for _, key := range []string{"mirrors", "configs"} {
		if m, ok := reg[key].(map[string]any); ok && len(m) > 0 {
			out = append(out, fmt.Sprintf("inline registry %s in [plugins.%q.registry]: containerd ignores config_path (and hosts.toml) while they are set; remove them", key, want))
		}
	}
	cp, _ := reg["config_path"].(string)
	switch {
	case cp == "" && registryOf(other)["config_path"] == nil:
		out = append(out, fmt.Sprintf("no config_path in [plugins.%q.registry]: the CRI plugin does not read %s; set config_path = %q (containerd reads hosts.toml afresh, no restart needed for the files, but the config change needs one)", want, hostsDir, hostsDir))
	case strings.Contains(cp, string(filepath.ListSeparator)):
		dirs := filepath.SplitList(cp)
		if !slices.Contains(dirs, filepath.Clean(hostsDir)) && !slices.Contains(dirs, hostsDir) {
			out = append(out, fmt.Sprintf("config_path %q is a list without %s: containerd never reads the host files written there", cp, hostsDir))
		} else {
			out = append(out, fmt.Sprintf("config_path %q is a list: a registry directory in an earlier entry wins over %s", cp, hostsDir))
		}
	case cp != "" && filepath.Clean(cp) != filepath.Clean(hostsDir):
		out = append(out, fmt.Sprintf("config_path is %q, not %s: containerd never reads the host files written there", cp, hostsDir))
	}
	return out
}
