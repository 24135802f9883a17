// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;

namespace Hyve.Net;

/// <summary>
/// libslirp's SlirpConfig as of config version 4 (libslirp 4.7, Debian's libslirp0), laid out as the C compiler lays it
/// out on x86-64: in_addr is a 4-byte, 4-aligned network-order word, in6_addr 16 bytes 4-aligned, bool one byte.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 192)]
internal unsafe struct SlirpConfig
{
    [FieldOffset(0)] public uint Version;
    [FieldOffset(4)] public int Restricted;
    [FieldOffset(8)] public byte InEnabled;
    [FieldOffset(12)] public uint VNetwork;
    [FieldOffset(16)] public uint VNetmask;
    [FieldOffset(20)] public uint VHost;
    [FieldOffset(24)] public byte In6Enabled;
    [FieldOffset(28)] public fixed byte VPrefixAddr6[16];
    [FieldOffset(44)] public byte VPrefixLen;
    [FieldOffset(48)] public fixed byte VHost6[16];
    [FieldOffset(64)] public nint VHostName;
    [FieldOffset(72)] public nint TftpServerName;
    [FieldOffset(80)] public nint TftpPath;
    [FieldOffset(88)] public nint BootFile;
    [FieldOffset(96)] public uint VDhcpStart;
    [FieldOffset(100)] public uint VNameserver;
    [FieldOffset(104)] public fixed byte VNameserver6[16];
    [FieldOffset(120)] public nint VDnsSearch;
    [FieldOffset(128)] public nint VDomainName;
    [FieldOffset(136)] public nuint IfMtu;
    [FieldOffset(144)] public nuint IfMru;
    [FieldOffset(152)] public byte DisableHostLoopback;
    [FieldOffset(153)] public byte EnableEmu;
    [FieldOffset(160)] public nint OutboundAddr;
    [FieldOffset(168)] public nint OutboundAddr6;
    [FieldOffset(176)] public byte DisableDns;
    [FieldOffset(177)] public byte DisableDhcp;
}

/// <summary>libslirp's SlirpCb (config version 4: eleven callbacks; two spare slots stay zero).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct SlirpCallbacks
{
    public delegate* unmanaged<byte*, nuint, nint, nint> SendPacket;
    public delegate* unmanaged<byte*, nint, void> GuestError;
    public delegate* unmanaged<nint, long> ClockGetNs;
    public delegate* unmanaged<nint, nint, nint, nint> TimerNew;
    public delegate* unmanaged<nint, nint, void> TimerFree;
    public delegate* unmanaged<nint, long, nint, void> TimerMod;
    public delegate* unmanaged<int, nint, void> RegisterPollFd;
    public delegate* unmanaged<int, nint, void> UnregisterPollFd;
    public delegate* unmanaged<nint, void> Notify;
    public nint InitCompleted;
    public nint TimerNewOpaque;
    public nint Spare0, Spare1;
}

/// <summary>struct pollfd.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct PollFd
{
    public int Fd;
    public short Events;
    public short Revents;
}

/// <summary>
/// Debian's libslirp (<c>libslirp.so.0</c>, package libslirp0), bound at run time so that a host without it gets one
/// clear line rather than a crash: the entry points hyve uses, as unmanaged function pointers.
/// </summary>
internal static unsafe partial class LibSlirp
{
    /// <summary>The package that provides the library (for the error line).</summary>
    public const string Package = "libslirp0";
    public const int PollIn = 1, PollOut = 2, PollPri = 4, PollErr = 8, PollHup = 16;

    private static nint _lib;
    public static delegate* unmanaged<SlirpConfig*, SlirpCallbacks*, nint, nint> New;
    public static delegate* unmanaged<nint, void> Cleanup;
    public static delegate* unmanaged<nint, uint*, delegate* unmanaged<int, int, nint, int>, nint, void> PollfdsFill;
    public static delegate* unmanaged<nint, int, delegate* unmanaged<int, nint, int>, nint, void> PollfdsPoll;
    public static delegate* unmanaged<nint, byte*, int, void> Input;
    public static delegate* unmanaged<nint, int, uint, int, uint, int, int> AddHostFwd;
    public static delegate* unmanaged<byte*> VersionString;
    // slirp_state_save(slirp, write_cb, opaque), slirp_state_load(slirp, version, read_cb, opaque), slirp_state_version();
    // the callbacks are ssize_t (*)(void *buf, size_t len, void *opaque).
    public static delegate* unmanaged<nint, delegate* unmanaged<byte*, nuint, nint, nint>, nint, int> StateSave;
    public static delegate* unmanaged<nint, int, delegate* unmanaged<byte*, nuint, nint, nint>, nint, int> StateLoad;
    public static delegate* unmanaged<int> StateVersion;

    private static readonly Lock Sync = new();

    /// <summary>Loads the library once; throws <see cref="HostConfigException"/> naming the package when it is missing.</summary>
    public static void Load()
    {
        lock (Sync)
        {
            if (_lib != 0) return;
            if (!NativeLibrary.TryLoad("libslirp.so.0", out var lib))
                throw new HostConfigException($"slirp: libslirp.so.0 not found (install Debian's package {Package})");
            try
            {
                New = (delegate* unmanaged<SlirpConfig*, SlirpCallbacks*, nint, nint>)NativeLibrary.GetExport(lib, "slirp_new");
                Cleanup = (delegate* unmanaged<nint, void>)NativeLibrary.GetExport(lib, "slirp_cleanup");
                PollfdsFill = (delegate* unmanaged<nint, uint*, delegate* unmanaged<int, int, nint, int>, nint, void>)NativeLibrary.GetExport(lib, "slirp_pollfds_fill");
                PollfdsPoll = (delegate* unmanaged<nint, int, delegate* unmanaged<int, nint, int>, nint, void>)NativeLibrary.GetExport(lib, "slirp_pollfds_poll");
                Input = (delegate* unmanaged<nint, byte*, int, void>)NativeLibrary.GetExport(lib, "slirp_input");
                AddHostFwd = (delegate* unmanaged<nint, int, uint, int, uint, int, int>)NativeLibrary.GetExport(lib, "slirp_add_hostfwd");
                VersionString = (delegate* unmanaged<byte*>)NativeLibrary.GetExport(lib, "slirp_version_string");
                StateSave = (delegate* unmanaged<nint, delegate* unmanaged<byte*, nuint, nint, nint>, nint, int>)NativeLibrary.GetExport(lib, "slirp_state_save");
                StateLoad = (delegate* unmanaged<nint, int, delegate* unmanaged<byte*, nuint, nint, nint>, nint, int>)NativeLibrary.GetExport(lib, "slirp_state_load");
                StateVersion = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "slirp_state_version");
            }
            catch (EntryPointNotFoundException e)
            {
                throw new HostConfigException($"slirp: libslirp.so.0 lacks {e.Message} (install Debian's package {Package}, 4.1 or later)");
            }
            _lib = lib;
        }
    }

    /// <summary>slirp_version_string(), e.g. "4.7.0".</summary>
    public static string Version
    {
        get
        {
            Load();
            return Marshal.PtrToStringUTF8((nint)VersionString()) ?? "";
        }
    }

    /// <summary>poll(2).</summary>
    [LibraryImport("libc", EntryPoint = "poll")]
    public static partial int Poll(PollFd* fds, nuint nfds, int timeout);
}
