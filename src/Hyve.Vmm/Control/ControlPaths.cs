// SPDX-License-Identifier: BSD-2-Clause
using System.Text;

namespace Hyve.Vmm.Control;

/// <summary>Where control sockets live; shared by the server (hyve) and the client (hyvectl).</summary>
public static class ControlPaths
{
    /// <summary>Environment variable that overrides the run directory.</summary>
    public const string RunDirVariable = "HYVE_RUN_DIR";

    /// <summary>Longest socket path in bytes: sun_path is 108 bytes including the terminating NUL.</summary>
    public const int MaxSocketPathBytes = 107;

    /// <summary>
    /// The run directory: <c>$HYVE_RUN_DIR</c> if set; else <c>/run/hyve</c> for root (effective uid 0);
    /// else <c>$XDG_RUNTIME_DIR/hyve</c>; else <c>/tmp/hyve-UID</c>.
    /// </summary>
    public static string RunDirectory()
    {
        string? dir = Environment.GetEnvironmentVariable(RunDirVariable);
        if (!string.IsNullOrEmpty(dir))
            return dir;
        return DefaultRunDirectory();
    }

    /// <summary>The run directory ignoring <c>$HYVE_RUN_DIR</c>.</summary>
    public static string DefaultRunDirectory()
    {
        uint uid = EffectiveUid();
        if (uid == 0)
            return "/run/hyve";
        string? xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        if (!string.IsNullOrEmpty(xdg))
            return Path.Combine(xdg, "hyve");
        return "/tmp/hyve-" + uid.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>The socket path for a VM in the default run directory.</summary>
    public static string SocketPath(string vmName) => SocketPath(vmName, RunDirectory());

    /// <summary>The socket path for a VM in the given run directory.</summary>
    /// <exception cref="ArgumentException">The name is empty, ".", "..", or contains '/' or NUL.</exception>
    public static string SocketPath(string vmName, string runDirectory)
    {
        if (!IsValidVmName(vmName))
            throw new ArgumentException($"invalid VM name \"{vmName}\"", nameof(vmName));
        return Path.Combine(runDirectory, vmName);
    }

    /// <summary>True for a name usable as one path component.</summary>
    public static bool IsValidVmName(string vmName) =>
        vmName.Length > 0 && vmName != "." && vmName != ".." &&
        vmName.IndexOf('/') < 0 && vmName.IndexOf('\0') < 0;

    /// <summary>True when the path fits in a sockaddr_un.</summary>
    public static bool FitsSocketAddress(string path) => Encoding.UTF8.GetByteCount(path) <= MaxSocketPathBytes;

    /// <summary>The effective uid (geteuid(2)).</summary>
    public static uint EffectiveUid() => Native.Libc.Geteuid();
}
