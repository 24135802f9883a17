// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hyve.Net;
using Hyve.Pci;
using Hyve.Vmm;

namespace Hyve.Virtio;

/// <summary>
/// virtio-net (virtio 1.2 section 5.1; bhyve's pci_virtio_net.c): <c>-s N,virtio-net,tapN[,mac=xx:xx:xx:xx:xx:xx][,mtu=N]</c>
/// on a Linux tap, or <c>-s N,virtio-net,slirp[,hostfwd=RULE[;RULE...]]</c> on libslirp (<see cref="INetBackend"/>).
/// One receive queue (0) and one transmit queue (1), no control queue. Features: MAC (given, or bhyve's rule: 00:a0:98
/// and the first three bytes of MD5("slot-func-vmname")), STATUS (link up), MRG_RXBUF (a frame may span several receive
/// buffers; num_buffers says how many), MTU when <c>mtu=</c> is given, and the checksum and TSO offloads the backend can
/// carry (a tap's; slirp takes none). Both queues and the backend's frames are served on the device's I/O thread.
/// A receive buffer smaller than the header, or a transmit chain without one, breaks the queue (DEVICE_NEEDS_RESET),
/// as the transport does for every other broken rule.
/// </summary>
public sealed unsafe class VirtioNet : VirtioPciDevice
{
    /// <summary>Virtio device type 1.</summary>
    public const int Type = 1;
    /// <summary>VIRTIO_NET_F_CSUM: the device takes partial checksums.</summary>
    public const ulong FeatureCsum = 1ul << 0;
    /// <summary>VIRTIO_NET_F_GUEST_CSUM: the driver takes partial checksums.</summary>
    public const ulong FeatureGuestCsum = 1ul << 1;
    /// <summary>VIRTIO_NET_F_MTU.</summary>
    public const ulong FeatureMtu = 1ul << 3;
    /// <summary>VIRTIO_NET_F_MAC.</summary>
    public const ulong FeatureMac = 1ul << 5;
    /// <summary>VIRTIO_NET_F_GUEST_TSO4.</summary>
    public const ulong FeatureGuestTso4 = 1ul << 7;
    /// <summary>VIRTIO_NET_F_GUEST_TSO6.</summary>
    public const ulong FeatureGuestTso6 = 1ul << 8;
    /// <summary>VIRTIO_NET_F_GUEST_ECN.</summary>
    public const ulong FeatureGuestEcn = 1ul << 9;
    /// <summary>VIRTIO_NET_F_HOST_TSO4.</summary>
    public const ulong FeatureHostTso4 = 1ul << 11;
    /// <summary>VIRTIO_NET_F_HOST_TSO6.</summary>
    public const ulong FeatureHostTso6 = 1ul << 12;
    /// <summary>VIRTIO_NET_F_HOST_ECN.</summary>
    public const ulong FeatureHostEcn = 1ul << 13;
    /// <summary>VIRTIO_NET_F_MRG_RXBUF.</summary>
    public const ulong FeatureMrgRxbuf = 1ul << 15;
    /// <summary>VIRTIO_NET_F_STATUS.</summary>
    public const ulong FeatureStatus = 1ul << 16;
    /// <summary>VIRTIO_NET_S_LINK_UP.</summary>
    public const ushort StatusLinkUp = 1;
    /// <summary>VIRTIO_NET_HDR_F_DATA_VALID.</summary>
    public const byte HdrFlagDataValid = 2;
    /// <summary>Entries per queue.</summary>
    public const ushort QueueSize = 256;
    /// <summary>The receive queue's index.</summary>
    public const int RxQueue = 0;
    /// <summary>The transmit queue's index.</summary>
    public const int TxQueue = 1;
    /// <summary>Largest frame the device moves (a 64 KiB TSO frame plus its Ethernet header).</summary>
    public const int MaxFrame = 65536 + 14;

    private readonly INetBackend _backend;
    private readonly ushort[] _heads = new ushort[QueueSize];
    private readonly uint[] _lens = new uint[QueueSize];
    private readonly IoVec* _iov;
    private ulong _configured = ulong.MaxValue; // the features the backend was configured for
    private int _hdrLen = 12;

    private VirtioNet(PciDeviceContext ctx, INetBackend backend, byte[] mac, int mtu)
        : base(ctx, Type, 0x1000, 0x02, 0x00, queues: 2, queueSize: QueueSize,
            deviceFeatures: FeatureMac | FeatureStatus | FeatureMrgRxbuf | (mtu > 0 ? FeatureMtu : 0) | backend.OffloadFeatures,
            configSize: 12)
    {
        _backend = backend;
        Mac = mac;
        _iov = (IoVec*)NativeMemory.Alloc((nuint)(sizeof(IoVec) * QueueSize));
        mac.CopyTo(DeviceConfig, 0);
        BinaryPrimitives.WriteUInt16LittleEndian(DeviceConfig.AsSpan(6), StatusLinkUp);
        BinaryPrimitives.WriteUInt16LittleEndian(DeviceConfig.AsSpan(8), 1); // max_virtqueue_pairs
        BinaryPrimitives.WriteUInt16LittleEndian(DeviceConfig.AsSpan(10), (ushort)(mtu > 0 ? mtu : 1500));
        StartIo();
        // Room for a refused frame is reported on the backend's thread: the transmit queue's eventfd brings it here.
        _backend.SendRoom = () => { if (Queues[TxQueue].NotifyFd >= 0) VirtioNative.Signal(Queues[TxQueue].NotifyFd); };
    }

    /// <summary>The MAC address the guest reads.</summary>
    public byte[] Mac { get; }
    /// <summary>The backend.</summary>
    public INetBackend Backend => _backend;
    /// <summary>Frames dropped because a single receive buffer (no MRG_RXBUF) was too small.</summary>
    public long OversizeDrops { get; private set; }

    /// <summary>Factory for <c>virtio-net</c>: a bad option, a tap that cannot be opened or a missing libslirp is a host error.</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        string be = ctx.Get("backend") ?? throw new HostConfigException($"{ctx.Where} virtio-net: no backend (-s N,virtio-net,tapN or slirp)");
        byte[] mac = ctx.Get("mac") is string m ? ParseMac(m, ctx.Where) : GenerateMac(ctx.Slot, ctx.Function, ctx.VmName);
        int mtu = 0;
        if (ctx.Get("mtu") is string ms &&
            (!int.TryParse(ms, NumberStyles.None, CultureInfo.InvariantCulture, out mtu) || mtu < 68 || mtu > 65535))
            throw new HostConfigException($"{ctx.Where} virtio-net: mtu={ms}: want a number from 68 to 65535");
        INetBackend backend;
        try
        {
            if (be == "slirp")
            {
                if (mtu > 65521) throw new HostConfigException($"{ctx.Where} virtio-net: mtu={mtu}: libslirp's limit is 65521");
                backend = new SlirpBackend(SlirpBackend.ParseForwards(ctx.Get("hostfwd")), mtu > 0 ? mtu : 1500);
            }
            else if (be.StartsWith("tap", StringComparison.Ordinal))
            {
                if (ctx.Get("hostfwd") is not null) throw new HostConfigException($"{ctx.Where} virtio-net: hostfwd= is a slirp option");
                backend = TapBackend.Open(be);
            }
            else throw new HostConfigException($"{ctx.Where} virtio-net: unknown network backend '{be}' (tapN or slirp)");
        }
        catch (HostConfigException e) when (!e.Message.StartsWith(ctx.Where, StringComparison.Ordinal))
        {
            throw new HostConfigException($"{ctx.Where} virtio-net: {e.Message}");
        }
        try { return new VirtioNet(ctx, backend, mac, mtu); }
        catch { backend.Dispose(); throw; }
    }

    /// <summary>bhyve's net_parsemac: six hex bytes separated by ':'; multicast and all-zero addresses are refused.</summary>
    public static byte[] ParseMac(string s, string where)
    {
        ArgumentNullException.ThrowIfNull(s);
        var parts = s.Split(':');
        var mac = new byte[6];
        bool ok = parts.Length == 6;
        for (int i = 0; ok && i < 6; i++)
            ok = parts[i].Length is 1 or 2 && byte.TryParse(parts[i], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out mac[i]);
        if (!ok || (mac[0] & 1) != 0 || Array.TrueForAll(mac, b => b == 0))
            throw new HostConfigException($"{where} virtio-net: invalid MAC {s}");
        return mac;
    }

    /// <summary>bhyve's net_genmac: the NetApp OUI 00:a0:98 and the first three bytes of MD5("slot-func-vmname").</summary>
    public static byte[] GenerateMac(int slot, int function, string vmName)
    {
        var d = System.Security.Cryptography.MD5.HashData(System.Text.Encoding.UTF8.GetBytes($"{slot}-{function}-{vmName}"));
        return [0x00, 0xa0, 0x98, d[0], d[1], d[2]];
    }

    /// <inheritdoc/>
    protected override void AddIoSources(VirtioIoThread io) =>
        io.AddReadable(_backend.ReceiveFd, OnBackendReadable, edgeTriggered: !_backend.ReceiveFdIsEventFd);

    private void OnBackendReadable()
    {
        if (_backend.ReceiveFdIsEventFd) VirtioNative.Drain(_backend.ReceiveFd);
        if (!TryEnterRunning()) return;
        try
        {
            EnsureConfigured();
            ReceiveFrames(Queues[RxQueue]);
        }
        finally { ExitRunning(); }
    }

    /// <inheritdoc/>
    protected override void OnQueueNotify(Virtqueue queue)
    {
        EnsureConfigured();
        if (queue.Index == RxQueue) ReceiveFrames(queue);
        else TransmitFrames(queue);
    }

    /// <inheritdoc/>
    protected override uint HandleChain(Virtqueue queue, DescriptorChain chain) => 0; // both queues are served above

    /// <inheritdoc/>
    protected override void OnDeviceReset() => _configured = ulong.MaxValue;

    // The header is 12 bytes (virtio_net_hdr_v1, or the legacy header with num_buffers) with VERSION_1 or MRG_RXBUF,
    // else the legacy 10 (spec 5.1.6). The backend learns it, and the offloads, once the driver is running.
    private void EnsureConfigured()
    {
        ulong f = DriverFeatures;
        if (f == _configured) return;
        _configured = f;
        _hdrLen = (f & (FeatureVersion1 | FeatureMrgRxbuf)) != 0 ? 12 : 10;
        _backend.Configure(_hdrLen, f);
    }

    /// <summary>The virtio-net header length in use (10 or 12).</summary>
    public int HeaderLength => _hdrLen;

    // ---- receive: backend -> guest ------------------------------------------------------------------------

    private enum Delivery { Done, NoRoom, Broken }

    private void ReceiveFrames(Virtqueue q)
    {
        if (!q.Enabled) return;
        ushort oldUsed = q.UsedIdx;
        while (true)
        {
            var frame = _backend.Peek();
            if (frame.IsEmpty) break;
            var r = Deliver(q, frame);
            if (r == Delivery.Broken) { QueueBroken(q); break; }
            if (r == Delivery.NoRoom)
            {
                if (q.ArmNotification()) continue; // buffers arrived meanwhile
                break; // the driver's next kick on this queue resumes here
            }
            _backend.Consume();
        }
        if (q.NeedsInterrupt(oldUsed)) InterruptQueue(q);
    }

    private Delivery Deliver(Virtqueue q, ReadOnlySpan<byte> frame)
    {
        bool mrg = (DriverFeatures & FeatureMrgRxbuf) != 0;
        int hdrLen = _hdrLen;
        // The guest sees [header][frame]: the backend's own header (tap) or one made here (zeros: no offload in use).
        Span<byte> ownHeader = stackalloc byte[12];
        ownHeader.Clear();
        // A backend without a header hands over frames it built itself with whole checksums (libslirp): with GUEST_CSUM the
        // guest is told so (VIRTIO_NET_HDR_F_DATA_VALID) and skips verifying them again.
        if ((DriverFeatures & FeatureGuestCsum) != 0) ownHeader[0] = HdrFlagDataValid;
        ReadOnlySpan<byte> head = _backend.HasVnetHeader ? default : ownHeader[..hdrLen];
        long total = head.Length + frame.Length;
        int popped = 0;
        long done = 0;
        ulong numBuffersAt = 0;
        while (done < total)
        {
            var r = q.Pop();
            if (r == PopResult.Broken) return Delivery.Broken;
            if (r == PopResult.Empty)
            {
                q.LastAvail -= (ushort)popped; // not yet used: the chains go back to the available side
                return Delivery.NoRoom;
            }
            var c = q.Chain;
            if (c.WritableBytes == 0) { q.MarkBroken("receive buffer without a device-writable part"); return Delivery.Broken; }
            if (popped == 0)
            {
                if (c.Length(c.FirstWritable) < hdrLen) { q.MarkBroken("receive buffer smaller than the virtio-net header"); return Delivery.Broken; }
                numBuffersAt = c.Address(c.FirstWritable) + 10;
                if (!mrg && c.WritableBytes < total)
                {
                    // A frame larger than the buffers the driver posted (it sized them for its MTU): dropped, as a NIC would.
                    q.LastAvail--;
                    OversizeDrops++;
                    return Delivery.Done;
                }
            }
            long n = Math.Min(c.WritableBytes, total - done);
            long w = CopyOut(c, head, frame, done, n);
            _heads[popped] = c.Head;
            _lens[popped] = (uint)w;
            popped++;
            done += n;
            if (popped == q.Size && done < total) { q.LastAvail -= (ushort)popped; OversizeDrops++; return Delivery.Done; }
        }
        if (hdrLen == 12 && Memory.TryGetSpan(numBuffersAt, 2, MemProt.Write, out var nb))
            BinaryPrimitives.WriteUInt16LittleEndian(nb, (ushort)popped);
        for (int i = 0; i < popped; i++)
            if (!q.Push(_heads[i], _lens[i])) return Delivery.Broken;
        return Delivery.Done;
    }

    // Copies bytes [from, from + n) of head+frame into the chain's writable part; returns the bytes written.
    private static long CopyOut(DescriptorChain c, ReadOnlySpan<byte> head, ReadOnlySpan<byte> frame, long from, long n)
    {
        long w = 0;
        if (from < head.Length)
        {
            int k = (int)Math.Min(head.Length - from, n);
            w += c.WriteWritable(0, head.Slice((int)from, k));
        }
        long fStart = Math.Max(0, from - head.Length);
        long fLen = from + n - head.Length - fStart;
        if (fLen > 0) w += c.WriteWritable(w, frame.Slice((int)fStart, (int)fLen));
        return w;
    }

    // ---- transmit: guest -> backend -----------------------------------------------------------------------

    private void TransmitFrames(Virtqueue q)
    {
        ushort oldUsed = q.UsedIdx;
        while (true)
        {
            var r = q.Pop();
            if (r == PopResult.Broken) { QueueBroken(q); break; }
            if (r == PopResult.Empty)
            {
                if (q.ArmNotification()) continue;
                break;
            }
            var c = q.Chain;
            if (c.ReadableBytes < _hdrLen) { q.MarkBroken("transmit buffer without its virtio-net header"); QueueBroken(q); break; }
            if (c.ReadableBytes <= _hdrLen + MaxFrame + 4) // larger ones are dropped (no NIC sends them)
            {
                int n = 0;
                bool ok = true;
                for (int i = 0; i < c.FirstWritable; i++)
                {
                    if (!c.TryGetSpan(i, out var s)) { ok = false; break; }
                    _iov[n].Base = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(s));
                    _iov[n].Length = (nuint)s.Length;
                    n++;
                }
                if (ok && !_backend.Send(new ReadOnlySpan<IoVec>(_iov, n), _hdrLen))
                {
                    q.LastAvail--; // the backend is full: this chain is sent again when it has room
                    break;
                }
            }
            if (!q.Push(c.Head, 0)) { QueueBroken(q); break; }
        }
        if (q.NeedsInterrupt(oldUsed)) InterruptQueue(q);
    }

    // ---- state ----------------------------------------------------------------------------------------------

    // The device's own state: 0 (a tap: the host kernel keeps nothing of the guest's) or 1 and libslirp's state (its
    // version, length and bytes: DHCP leases and the IP ID counter; see SlirpBackend.SaveState for what does not
    // survive). Frames queued between the backend and the guest are not saved: a network may drop frames.
    /// <inheritdoc/>
    protected override void SaveDeviceState(BinaryWriter writer)
    {
        if (_backend is not SlirpBackend slirp)
        {
            writer.Write((byte)0);
            return;
        }
        var (version, state) = slirp.SaveState();
        writer.Write((byte)1);
        writer.Write(version);
        writer.Write(state.Length);
        writer.Write(state);
    }

    /// <inheritdoc/>
    protected override void LoadDeviceState(BinaryReader reader, int length)
    {
        if (length == 0) return; // a version-1 section: nothing of the backend's was saved
        byte kind = reader.ReadByte();
        if (kind == 0) return;
        if (kind != 1) throw new InvalidDataException($"virtio-net {Where}: unknown backend state kind {kind}");
        int version = reader.ReadInt32(), n = reader.ReadInt32();
        if (n < 0 || n > length) throw new InvalidDataException($"virtio-net {Where}: slirp state of {n} bytes");
        var state = reader.ReadBytes(n);
        if (state.Length != n) throw new EndOfStreamException();
        // A slirp snapshot restored onto a tap (or the reverse) has nothing to carry over: the link is simply new.
        if (_backend is SlirpBackend slirp) slirp.LoadState(version, state);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        base.Dispose(); // the I/O thread stops first: nothing uses the backend after this
        _backend.Dispose();
        NativeMemory.Free(_iov);
    }
}
