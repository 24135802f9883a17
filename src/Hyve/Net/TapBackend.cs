// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Virtio;

namespace Hyve.Net;

/// <summary>
/// A Linux tap device (bhyve's tap backend, QEMU's <c>-netdev tap</c>): /dev/net/tun attached with TUNSETIFF as
/// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so every frame both ways starts with a virtio-net header and the guest's checksum
/// and segmentation offloads go through the host kernel untouched. The header length follows the guest (TUNSETVNETHDRSZ:
/// 12 for VERSION_1 or MRG_RXBUF, else 10); the offloads the guest takes on receive are set with TUNSETOFFLOAD, and offered
/// only when the tap accepted them at open. The fd is non-blocking and read by the device's I/O thread (edge-triggered).
/// An existing tap (made with <c>ip tuntap add NAME mode tap</c>) is attached; otherwise the kernel creates one (root).
/// </summary>
public sealed unsafe partial class TapBackend : INetBackend
{
    private const nuint TunSetIff = 0x400454ca, TunSetOffload = 0x400454d0, TunSetVnetHdrSz = 0x400454d8;
    private const short IffTap = 0x0002, IffNoPi = 0x1000, IffVnetHdr = 0x4000;
    private const uint TunFCsum = 1, TunFTso4 = 2, TunFTso6 = 4, TunFTsoEcn = 8;
    private const int ONonBlock = 0x800, EAGAIN = 11;
    /// <summary>Largest frame with its header: a 64 KiB GSO frame plus Ethernet and the header.</summary>
    private const int BufferSize = 65536 + 14 + 12 + 64;

    private readonly int _fd;
    private readonly byte* _buf;
    private int _held; // bytes of the frame in _buf (0 when none)
    private long _dropped;

    private TapBackend(string name, int fd, ulong offloads)
    {
        Name = name;
        _fd = fd;
        OffloadFeatures = offloads;
        _buf = (byte*)NativeMemory.Alloc(BufferSize);
    }

    /// <summary>Opens tap <paramref name="name"/>; a tap that cannot be opened is a <see cref="HostConfigException"/>.</summary>
    public static TapBackend Open(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name.Length > 15) throw new HostConfigException($"{name}: interface names have at most 15 characters");
        int fd = VirtioNative.Open("/dev/net/tun", VirtioNative.ORdWr | ONonBlock | VirtioNative.CloExec, 0);
        if (fd < 0) throw new HostConfigException($"{name}: cannot open /dev/net/tun: {VirtioNative.LastError()}");
        byte* ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        System.Text.Encoding.ASCII.GetBytes(name, new Span<byte>(ifr, 15));
        *(short*)(ifr + 16) = IffTap | IffNoPi | IffVnetHdr;
        if (VirtioNative.Ioctl(fd, TunSetIff, ifr) != 0)
        {
            string why = VirtioNative.LastError();
            VirtioNative.Close(fd);
            throw new HostConfigException($"{name}: cannot attach the tap (TUNSETIFF): {why}");
        }
        int hdr = 12;
        if (VirtioNative.Ioctl(fd, TunSetVnetHdrSz, &hdr) != 0)
        {
            string why = VirtioNative.LastError();
            VirtioNative.Close(fd);
            throw new HostConfigException($"{name}: TUNSETVNETHDRSZ: {why}");
        }
        // Sending offloads (the guest's partial checksums and TSO frames) need only the header; receiving ones need the
        // tap to agree to hand us such frames, which is asked now and set for real once the guest has chosen.
        ulong offloads = VirtioNet.FeatureCsum | VirtioNet.FeatureHostTso4 | VirtioNet.FeatureHostTso6 | VirtioNet.FeatureHostEcn;
        nuint all = TunFCsum | TunFTso4 | TunFTso6 | TunFTsoEcn;
        if (VirtioNative.Ioctl(fd, TunSetOffload, (void*)all) == 0)
            offloads |= VirtioNet.FeatureGuestCsum | VirtioNet.FeatureGuestTso4 | VirtioNet.FeatureGuestTso6 | VirtioNet.FeatureGuestEcn;
        VirtioNative.Ioctl(fd, TunSetOffload, null);
        return new TapBackend(name, fd, offloads);
    }

    /// <inheritdoc/>
    public string Name { get; }
    /// <inheritdoc/>
    public ulong OffloadFeatures { get; }
    /// <inheritdoc/>
    public bool HasVnetHeader => true;
    /// <inheritdoc/>
    public int ReceiveFd => _fd;
    /// <inheritdoc/>
    public bool ReceiveFdIsEventFd => false;
    /// <inheritdoc/>
    public Action? SendRoom { get; set; }
    /// <summary>Frames the host refused (write errors).</summary>
    public long Dropped => _dropped;

    /// <inheritdoc/>
    public void Configure(int vnetHeaderLength, ulong negotiatedFeatures)
    {
        int hdr = vnetHeaderLength;
        VirtioNative.Ioctl(_fd, TunSetVnetHdrSz, &hdr);
        nuint f = 0;
        if ((negotiatedFeatures & VirtioNet.FeatureGuestCsum) != 0)
        {
            f |= TunFCsum;
            if ((negotiatedFeatures & VirtioNet.FeatureGuestTso4) != 0) f |= TunFTso4;
            if ((negotiatedFeatures & VirtioNet.FeatureGuestTso6) != 0) f |= TunFTso6;
            if ((negotiatedFeatures & VirtioNet.FeatureGuestEcn) != 0 && (f & (TunFTso4 | TunFTso6)) != 0) f |= TunFTsoEcn;
        }
        VirtioNative.Ioctl(_fd, TunSetOffload, (void*)f);
        _held = 0;
    }

    /// <inheritdoc/>
    public ReadOnlySpan<byte> Peek()
    {
        if (_held > 0) return new ReadOnlySpan<byte>(_buf, _held);
        while (true)
        {
            nint n = VirtioNative.Read(_fd, _buf, BufferSize);
            if (n > 0) { _held = (int)n; return new ReadOnlySpan<byte>(_buf, _held); }
            if (n == 0 || Marshal.GetLastPInvokeError() == EAGAIN) return default;
            if (Marshal.GetLastPInvokeError() != 4) return default; // EINTR retries; other errors: nothing to read
        }
    }

    /// <inheritdoc/>
    public void Consume() => _held = 0;

    /// <inheritdoc/>
    public bool Send(ReadOnlySpan<IoVec> parts, int headerLength)
    {
        fixed (IoVec* iov = parts)
        {
            // The guest's header length is the tap's (Configure), so the chain goes out as it is.
            if (Writev(_fd, iov, parts.Length) < 0) _dropped++;
        }
        return true;
    }

    [LibraryImport("libc", SetLastError = true, EntryPoint = "writev")]
    private static partial nint Writev(int fd, IoVec* iov, int count);

    /// <summary>Closes the tap.</summary>
    public void Dispose()
    {
        VirtioNative.Close(_fd);
        NativeMemory.Free(_buf);
        GC.SuppressFinalize(this);
    }
}
