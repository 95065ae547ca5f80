"""The storage stack: mounts, block devices and how they sit on each other.

A filemap tracepoint says "dev 7:0 inode 2"; meaning comes from here. The topology is
read from /proc/self/mountinfo and /sys/class/block (plus LOOP_GET_STATUS64 and
`dmsetup table`), stored in the recording as plain JSON and read back on another machine.

  devices   "major:minor" from either dev_t encoding
  mounts    /proc/<pid>/mountinfo
  blockdev  sysfs, loop ioctls, superblock probes, dm tables
  model     the Topology read at one moment, its JSON form, and merge
  resolve   a (dev, inode)'s layer and chain; double caching along chains
  overlay   an overlay's upper and lower layers; paths spelled through the overlay
  paths     the one bounded walk of trees; names for files known only by inode
  uevents   block devices appearing and going (netlink)

Light on purpose (stdlib only; pyroute2 only inside UeventWatcher): imported by the
recorder in early boot. Imports go one way: devices and mounts at the bottom, then
blockdev and overlay, model, and resolve and paths on top; uevents stands alone.
"""

from .blockdev import (loop_status, may_open, parse_dm_table, probe_fstype, read_block_devices,
                       read_dm_tables, udev_fstype)
from .devices import devstr, kdev
from .model import Topology, merge, read_topology
from .mounts import parse_mountinfo, read_mounts, system_root
from .overlay import UserPaths, layer_role, overlays
from .paths import Budget, path_of, paths_of, walk_tree
from .resolve import double_caching, layer_of, learn_bdev_sb_dev, resolve
from .uevents import UeventWatcher, parse_uevent

__all__ = [
    "Topology", "read_mounts", "parse_mountinfo", "read_block_devices", "read_dm_tables",
    "parse_dm_table", "loop_status", "probe_fstype", "udev_fstype", "may_open", "read_topology", "merge", "resolve",
    "layer_of", "path_of", "paths_of", "double_caching", "devstr", "kdev", "learn_bdev_sb_dev",
    "system_root", "UeventWatcher", "parse_uevent", "overlays", "layer_role", "UserPaths",
    "Budget", "walk_tree",
]
