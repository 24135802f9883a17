// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Pci;
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Virtio;

/// <summary>Saved transport state of a virtio PCI function (queues apart).</summary>
public sealed record VirtioTransportState(int Version, byte Status, ulong DriverFeatures, uint DeviceFeatureSelect,
    uint DriverFeatureSelect, ushort QueueSelect, ushort ConfigVector, byte ConfigGeneration, byte Isr, bool LegacyDriver,
    VirtqueueState[] Queues);

/// <summary>
/// The virtio 1.x PCI transport (virtio 1.2 section 4.1), shared by every virtio device.
/// <para>
/// Modern interface: vendor capabilities (ID 09h) for the common configuration (0x0000), ISR (0x1000), device
/// configuration (0x2000) and notifications (0x3000, a 4-byte window per queue) in a 64-bit memory BAR 4, plus the
/// PCI configuration access capability for firmware that cannot reach a BAR above 4 GiB (SeaBIOS). A transitional
/// function (the default) also has the legacy 0.9.5 register block in I/O BAR 0, device ID 0x1000-0x103F, revision 0
/// and subsystem ID = device type; <c>legacy=false</c> makes a modern-only function (ID 0x1040 + type, revision 1).
/// </para>
/// <para>
/// Interrupts follow bhyve's vi_intr_init: MSI-X (BAR 1) with a vector per queue plus one for configuration changes,
/// unless <c>-W</c> (key <c>virtio_msix=false</c>); a single-vector MSI capability and INTx always. Without MSI-X the
/// ISR bits (1 queue, 2 configuration) are set and the ISR read clears them and lowers INTx.
/// </para>
/// <para>
/// Queue work runs on the device's <see cref="VirtioIoThread"/>: a notify only signals the queue's eventfd. The transport
/// lock is held by the I/O thread while it serves a queue and by the vCPU while it writes the common configuration,
/// so a reset never races a request. A guest that breaks a queue's rules gets DEVICE_NEEDS_RESET (one stderr line).
/// </para>
/// </summary>
public abstract class VirtioPciDevice : PciDevice, IDisposable, IDeviceState, IQuiescent
{
    /// <summary>VIRTIO_F_INDIRECT_DESC.</summary>
    public const ulong FeatureIndirectDesc = 1ul << 28;
    /// <summary>VIRTIO_F_RING_EVENT_IDX.</summary>
    public const ulong FeatureEventIdx = 1ul << 29;
    /// <summary>VIRTIO_F_VERSION_1.</summary>
    public const ulong FeatureVersion1 = 1ul << 32;
    /// <summary>VIRTIO_F_RING_RESET.</summary>
    public const ulong FeatureRingReset = 1ul << 40;
    /// <summary>Device status ACKNOWLEDGE.</summary>
    public const byte StatusAcknowledge = 1;
    /// <summary>Device status DRIVER.</summary>
    public const byte StatusDriver = 2;
    /// <summary>Device status DRIVER_OK.</summary>
    public const byte StatusDriverOk = 4;
    /// <summary>Device status FEATURES_OK.</summary>
    public const byte StatusFeaturesOk = 8;
    /// <summary>Device status DEVICE_NEEDS_RESET.</summary>
    public const byte StatusNeedsReset = 0x40;
    /// <summary>Device status FAILED.</summary>
    public const byte StatusFailed = 0x80;
    /// <summary>Offset of the common configuration in the modern BAR.</summary>
    public const int CommonOffset = 0x0000;
    /// <summary>Offset of the ISR byte in the modern BAR.</summary>
    public const int IsrOffset = 0x1000;
    /// <summary>Offset of the device configuration in the modern BAR.</summary>
    public const int DeviceOffset = 0x2000;
    /// <summary>Offset of the notification windows in the modern BAR.</summary>
    public const int NotifyOffset = 0x3000;
    /// <summary>notify_off_multiplier: queue N's window is at NotifyOffset + 4 N.</summary>
    public const int NotifyMultiplier = 4;
    /// <summary>The modern BAR's index (64-bit, so it also takes BAR 5).</summary>
    public const int ModernBar = 4;
    /// <summary>The MSI-X table BAR's index.</summary>
    public const int MsixBar = 1;
    /// <summary>The legacy I/O BAR's index.</summary>
    public const int LegacyBar = 0;
    private const int CommonLength = 0x3c;
    private const int TransportStateVersion = 1;

    private readonly Lock _lock = new();
    private readonly Virtqueue[] _queues;
    private readonly int _pciCfgCap;
    private VirtioIoThread? _io;
    private bool _reported;
    private bool _quiesced;

    // The transport's state (all of it; see SaveTransport).
    private byte _status;
    private ulong _driverFeatures;
    private uint _deviceFeatureSelect, _driverFeatureSelect;
    private ushort _queueSelect;
    private ushort _configVector = Virtqueue.NoVector;
    private byte _configGeneration;
    private byte _isr;
    private bool _legacyDriver;

    /// <summary>Sets up the function: IDs, capabilities, BARs, queues and their I/O thread (started by the caller
    /// through <see cref="StartIo"/> once the device's own fields are ready). A <paramref name="transitionalId"/> of 0
    /// makes a modern-only function whatever <c>legacy</c> says.</summary>
    protected VirtioPciDevice(PciDeviceContext ctx, int deviceType, ushort transitionalId, byte baseClass, byte subClass,
        int queues, ushort queueSize, ulong deviceFeatures, int configSize)
        : base(0x1af4, (ushort)(0x1040 + deviceType), baseClass, subClass)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        DeviceType = deviceType;
        Where = ctx.Where;
        Memory = ctx.Bus.Memory;
        // A device type born after virtio 0.9.5 (input, ...) has no transitional ID: it is always modern-only.
        Transitional = transitionalId != 0 && ctx.GetBool("legacy", true);
        bool msix = ctx.Root?.GetBool("virtio_msix", true) ?? true;
        DeviceFeatures = deviceFeatures | FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx | FeatureRingReset;
        DeviceConfig = new byte[configSize];
        if (Transitional) SetIds(0x1af4, transitionalId);
        else SetConfig8(0x08, 1); // revision 1: a modern-only device (spec 4.1.2.1)
        SetSubsystem(0x1af4, (ushort)deviceType);

        _queues = new Virtqueue[queues];
        for (int i = 0; i < queues; i++) _queues[i] = new Virtqueue(Memory, i, queueSize);

        if (Transitional)
            AddIoBar(LegacyBar, (ulong)Math.Min(256, (int)RoundPow2((ulong)(0x18 + configSize))), new LegacyRegion(this));
        AddMemoryBar(ModernBar, 0x4000, new ModernRegion(this), is64: true);
        if (msix) AddMsiX(queues + 1, MsixBar);
        AddMsi(1);
        RequestIntx();
        AddVirtioCap(1, CommonOffset, CommonLength);
        int notify = AddVirtioCap(2, NotifyOffset, (uint)(NotifyMultiplier * queues), extra: 4);
        SetConfig32(notify + 16, NotifyMultiplier);
        AddVirtioCap(3, IsrOffset, 1);
        if (configSize > 0) AddVirtioCap(4, DeviceOffset, (uint)configSize);
        _pciCfgCap = AddVirtioCap(5, 0, 0, extra: 4);
        // virtio_pci_cfg_cap: the driver picks bar, offset and length, then reads or writes pci_cfg_data.
        SetWritable(_pciCfgCap + 4, 1, 0xff);
        SetWritable(_pciCfgCap + 8, 8, 0xff);
    }

    /// <summary>Virtio device type (1 net, 2 block, 3 console, 4 entropy, ...).</summary>
    public int DeviceType { get; }
    /// <summary>Where the function sits (pci.B.S.F), for messages.</summary>
    public string Where { get; }
    /// <summary>Guest memory the queues live in.</summary>
    protected GuestMemory Memory { get; }
    /// <summary>True for a transitional function (legacy I/O BAR too).</summary>
    public bool Transitional { get; }
    /// <summary>Feature bits offered.</summary>
    public ulong DeviceFeatures { get; }
    /// <summary>Feature bits the driver accepted (masked to those offered).</summary>
    public ulong DriverFeatures => _driverFeatures;
    /// <summary>Device status register.</summary>
    public byte DeviceStatus => _status;
    /// <summary>The device-specific configuration bytes (devices fill them; reads see them as they are).</summary>
    protected byte[] DeviceConfig { get; }
    /// <summary>The queues.</summary>
    public IReadOnlyList<Virtqueue> Queues => _queues;
    /// <summary>The ISR byte (bit 0 queue, bit 1 configuration), without clearing it.</summary>
    public byte IsrStatus { get { lock (Sync) return _isr; } }

    private int AddVirtioCap(byte type, int offset, uint length, int extra = 0)
    {
        int off = AddCapability(0x09, 16 + extra);
        SetConfig8(off + 2, (byte)(16 + extra));
        SetConfig8(off + 3, type);
        SetConfig8(off + 4, type == 5 ? (byte)0 : (byte)ModernBar);
        SetConfig32(off + 8, (uint)offset);
        SetConfig32(off + 12, length);
        return off;
    }

    /// <summary>Creates the I/O thread with an eventfd per queue and starts it; call at the end of the device's constructor.</summary>
    protected void StartIo()
    {
        _io = new VirtioIoThread($"{GetType().Name} {Where}");
        foreach (var q in _queues)
        {
            var queue = q;
            q.NotifyFd = _io.AddEventFd(() => Serve(queue));
        }
        AddIoSources(_io);
        _io.Start();
        RefreshDoorbells();
    }

    // ---- doorbells: notify writes that a backend can turn into eventfd signals without an exit ---------------

    private readonly List<IoEventFd> _doorbells = [];

    /// <inheritdoc/>
    protected override void OnBarDecodeChanged(PciBar bar)
    {
        if (bar.Index == ModernBar || (Transitional && bar.Index == LegacyBar)) RefreshDoorbells();
    }

    // Each queue's modern notify window (any width), and the legacy notify port matched on the queue index written to it.
    private void RefreshDoorbells()
    {
        var table = Bus?.IoEventFds;
        if (table is null) return;
        lock (_doorbells)
        {
            foreach (var e in _doorbells) table.Remove(e);
            _doorbells.Clear();
            if (_io is null) return;
            var modern = Bars[ModernBar];
            var legacy = Transitional ? Bars[LegacyBar] : null;
            foreach (var q in _queues)
            {
                if (q.NotifyFd < 0) continue;
                if (modern is { Decoding: true })
                    _doorbells.Add(new IoEventFd(modern.DecodedAt + NotifyOffset + (ulong)(NotifyMultiplier * q.Index), 0, false, null, q.NotifyFd));
                if (legacy is { Decoding: true })
                    _doorbells.Add(new IoEventFd(legacy.DecodedAt + 0x10, 2, true, (ulong)q.Index, q.NotifyFd));
            }
            foreach (var e in _doorbells) table.Add(e);
        }
    }

    /// <summary>The doorbells registered with the VM now (for tests and diagnostics).</summary>
    public IReadOnlyList<IoEventFd> Doorbells { get { lock (_doorbells) return [.. _doorbells]; } }

    /// <summary>Lets a device watch more fds (a console's input) on its I/O thread before it starts.</summary>
    protected virtual void AddIoSources(VirtioIoThread io) { }

    // ---- the device's side ------------------------------------------------------------------------------

    /// <summary>Serves one chain on the I/O thread; returns the bytes written into its device-writable part.
    /// Runs under the transport lock.</summary>
    protected abstract uint HandleChain(Virtqueue queue, DescriptorChain chain);

    /// <summary>Serves a notified queue (default: every available chain through <see cref="HandleChain"/>).</summary>
    protected virtual void OnQueueNotify(Virtqueue queue) => DrainQueue(queue);

    /// <summary>Device-specific part of a reset (the transport's is done).</summary>
    protected virtual void OnDeviceReset() { }

    /// <summary>A device-configuration write (default: ignored; the configuration is read-only).</summary>
    protected virtual void OnDeviceConfigWrite(int offset, int size, ulong value) { }

    /// <summary>Takes the transport lock if the driver is running (DRIVER_OK, not NEEDS_RESET), for device-initiated
    /// work such as console input; false (lock not held) otherwise. Pair with <see cref="ExitRunning"/>.</summary>
    protected bool TryEnterRunning()
    {
        _lock.Enter();
        if (!_quiesced && (_status & StatusDriverOk) != 0 && (_status & StatusNeedsReset) == 0) return true;
        _lock.Exit();
        return false;
    }

    /// <summary>Releases the lock <see cref="TryEnterRunning"/> took.</summary>
    protected void ExitRunning() => _lock.Exit();

    private void Serve(Virtqueue q)
    {
        lock (_lock)
        {
            if (_quiesced || (_status & StatusDriverOk) == 0 || (_status & StatusNeedsReset) != 0 || !q.Enabled) return;
            OnQueueNotify(q);
        }
    }

    /// <summary>Takes every available chain of <paramref name="q"/>, serves it, publishes it, and interrupts once.</summary>
    protected void DrainQueue(Virtqueue q)
    {
        ushort old = q.UsedIdx;
        while (true)
        {
            var r = q.Pop();
            if (r == PopResult.Broken) { QueueBroken(q); break; }
            if (r == PopResult.Empty)
            {
                if (q.ArmNotification()) continue;
                break;
            }
            uint written = HandleChain(q, q.Chain);
            if (q.Error is not null) { QueueBroken(q); break; }
            if (!q.Push(q.Chain.Head, written)) { QueueBroken(q); break; }
        }
        if (q.NeedsInterrupt(old)) InterruptQueue(q);
    }

    /// <summary>Puts the device in DEVICE_NEEDS_RESET for the guest's mistake on <paramref name="q"/> (one stderr line).</summary>
    protected void QueueBroken(Virtqueue q)
    {
        if ((_status & StatusNeedsReset) != 0) return;
        _status |= StatusNeedsReset;
        if (!_reported)
        {
            _reported = true;
            Console.Error.WriteLine($"hyve: {Emulation} {Where}: queue {q.Index}: {q.Error ?? "device ring unusable"}; device needs reset");
        }
        if ((_status & StatusDriverOk) != 0) SignalConfigChange();
    }

    /// <summary>Interrupts for used buffers on <paramref name="q"/>: its MSI-X vector, else ISR bit 0 with MSI or INTx.</summary>
    protected void InterruptQueue(Virtqueue q)
    {
        if (MsiX is { Enabled: true } msix)
        {
            if (q.MsixVector != Virtqueue.NoVector) msix.Send(q.MsixVector);
            return;
        }
        RaiseIsr(1);
    }

    /// <summary>Tells the driver the device configuration changed (generation bumped; config vector or ISR bit 1).</summary>
    protected void SignalConfigChange()
    {
        _configGeneration++;
        if (MsiX is { Enabled: true } msix)
        {
            if (_configVector != Virtqueue.NoVector) msix.Send(_configVector);
            return;
        }
        RaiseIsr(2);
    }

    private void RaiseIsr(byte bit)
    {
        lock (Sync)
        {
            _isr |= bit;
            if (Msi is { Enabled: true } msi) msi.Send(0);
            else AssertIntx();
        }
    }

    private byte ReadIsr()
    {
        lock (Sync)
        {
            byte v = _isr;
            _isr = 0;
            DeassertIntx();
            return v;
        }
    }

    private void Notify(uint queue)
    {
        if (queue < (uint)_queues.Length && _queues[queue].NotifyFd >= 0) VirtioNative.Signal(_queues[queue].NotifyFd);
    }

    // ---- reset and status -----------------------------------------------------------------------------------

    /// <summary>Device reset (status 0): features, status, queues, ISR and vectors back to their initial values.</summary>
    public void ResetDevice()
    {
        lock (_lock)
        {
            _status = 0;
            _driverFeatures = 0;
            _deviceFeatureSelect = _driverFeatureSelect = 0;
            _queueSelect = 0;
            _configVector = Virtqueue.NoVector;
            _legacyDriver = false;
            _reported = false;
            foreach (var q in _queues) q.Reset();
            lock (Sync)
            {
                _isr = 0;
                DeassertIntx();
            }
            OnDeviceReset();
        }
    }

    /// <inheritdoc/>
    protected override void OnReset() => ResetDevice();

    private void WriteStatus(byte value)
    {
        if (value == 0) { ResetDevice(); return; }
        byte old = _status;
        byte keep = (byte)(old & StatusNeedsReset);
        if ((value & StatusFeaturesOk) != 0 && (old & StatusFeaturesOk) == 0 && !FeaturesAcceptable())
            value &= unchecked((byte)~StatusFeaturesOk);
        _status = (byte)(value | keep);
        if ((value & StatusDriverOk) != 0 && (old & StatusDriverOk) == 0)
            foreach (var q in _queues) if (q.Enabled) Notify((uint)q.Index); // buffers queued before DRIVER_OK
    }

    // The modern interface needs VERSION_1 (spec 6.1: a device may fail FEATURES_OK without it).
    private bool FeaturesAcceptable() => _legacyDriver || (_driverFeatures & FeatureVersion1) != 0;

    private void EnableQueue(Virtqueue q)
    {
        q.EventIdx = (_driverFeatures & FeatureEventIdx) != 0;
        q.IndirectDesc = (_driverFeatures & FeatureIndirectDesc) != 0;
        if (q.Size == 0 || (q.Size & (q.Size - 1)) != 0 || q.Size > q.MaxSize) { q.Size = q.MaxSize; QueueBrokenWith(q, "queue size not a power of two up to the maximum"); return; }
        q.Enabled = true;
        q.ResetPending = false;
        if (!q.CheckRings()) QueueBroken(q);
    }

    private void QueueBrokenWith(Virtqueue q, string reason)
    {
        q.Enabled = false;
        if ((_status & StatusNeedsReset) != 0) return;
        _status |= StatusNeedsReset;
        if (!_reported) { _reported = true; Console.Error.WriteLine($"hyve: {Emulation} {Where}: queue {q.Index}: {reason}; device needs reset"); }
    }

    private Virtqueue? Selected => _queueSelect < _queues.Length ? _queues[_queueSelect] : null;

    private ushort CheckVector(ushort v) => MsiX is { } m && v < m.Vectors ? v : Virtqueue.NoVector;

    // ---- modern common configuration --------------------------------------------------------------------

    private void CommonRead(Span<byte> c)
    {
        var q = Selected;
        BinaryPrimitives.WriteUInt32LittleEndian(c, _deviceFeatureSelect);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x04..], _deviceFeatureSelect < 2 ? (uint)(DeviceFeatures >> (int)(32 * _deviceFeatureSelect)) : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x08..], _driverFeatureSelect);
        BinaryPrimitives.WriteUInt32LittleEndian(c[0x0c..], _driverFeatureSelect < 2 ? (uint)(_driverFeatures >> (int)(32 * _driverFeatureSelect)) : 0);
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x10..], _configVector);
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x12..], (ushort)_queues.Length);
        c[0x14] = _status;
        c[0x15] = _configGeneration;
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x16..], _queueSelect);
        if (q is null) return;
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x18..], q.Size);
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x1a..], q.MsixVector);
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x1c..], q.Enabled ? (ushort)1 : (ushort)0);
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x1e..], (ushort)q.Index);
        BinaryPrimitives.WriteUInt64LittleEndian(c[0x20..], q.Desc);
        BinaryPrimitives.WriteUInt64LittleEndian(c[0x28..], q.Driver);
        BinaryPrimitives.WriteUInt64LittleEndian(c[0x30..], q.Device);
        BinaryPrimitives.WriteUInt16LittleEndian(c[0x3a..], q.ResetPending ? (ushort)1 : (ushort)0);
    }

    private void CommonWrite(int offset, int size, ulong value)
    {
        var q = Selected;
        bool qw = q is not null && !q.Enabled; // ring fields are the driver's only while the queue is off
        switch (offset)
        {
            case 0x00 when size == 4: _deviceFeatureSelect = (uint)value; break;
            case 0x08 when size == 4: _driverFeatureSelect = (uint)value; break;
            case 0x0c when size == 4:
                if ((_status & StatusFeaturesOk) != 0 || _driverFeatureSelect > 1) break;
                int shift = (int)(32 * _driverFeatureSelect);
                ulong mask = 0xffff_ffffuL << shift;
                _driverFeatures = (_driverFeatures & ~mask) | (((ulong)(uint)value << shift) & DeviceFeatures);
                break;
            case 0x10 when size == 2: _configVector = CheckVector((ushort)value); break;
            case 0x14 when size == 1: WriteStatus((byte)value); break;
            case 0x16 when size == 2: _queueSelect = (ushort)value; break;
            case 0x18 when size == 2 && qw: q!.Size = (ushort)value; break;
            case 0x1a when size == 2 && q is not null: q.MsixVector = CheckVector((ushort)value); break;
            case 0x1c when size == 2 && q is not null: if ((value & 1) != 0 && !q.Enabled) EnableQueue(q); break;
            case 0x20 or 0x28 or 0x30 when size == 8 && qw: SetRing(q!, offset, value); break;
            case 0x20 or 0x24 or 0x28 or 0x2c or 0x30 or 0x34 when size == 4 && qw:
                ulong cur = offset < 0x28 ? q!.Desc : offset < 0x30 ? q!.Driver : q!.Device;
                bool hi = (offset & 4) != 0;
                ulong v = hi ? (cur & 0xffff_ffff) | (value << 32) : (cur & ~0xffff_fffful) | (uint)value;
                SetRing(q, offset & ~7, v);
                break;
            case 0x3a when size == 2 && q is not null:
                if ((value & 1) != 0 && (_driverFeatures & FeatureRingReset) != 0)
                {
                    q.Reset();
                    q.ResetPending = true;
                }
                break;
        }
    }

    private static void SetRing(Virtqueue q, int offset, ulong v)
    {
        if (offset == 0x20) q.Desc = v;
        else if (offset == 0x28) q.Driver = v;
        else q.Device = v;
    }

    private ulong ModernRead(ulong offset, int size)
    {
        ulong ones = size >= 8 ? ulong.MaxValue : (1ul << (size * 8)) - 1;
        if (offset < CommonLength)
        {
            if (offset + (ulong)size > CommonLength) return ones;
            Span<byte> c = stackalloc byte[CommonLength + 4];
            c.Clear();
            lock (_lock) CommonRead(c);
            return Little(c.Slice((int)offset, size));
        }
        if (offset == IsrOffset) return ReadIsr();
        if (offset >= DeviceOffset && offset < DeviceOffset + (ulong)DeviceConfig.Length)
            return ReadDeviceConfig((int)(offset - DeviceOffset), size);
        return offset >= NotifyOffset ? 0 : ones;
    }

    private void ModernWrite(ulong offset, int size, ulong value)
    {
        if (offset >= NotifyOffset)
        {
            // Hot path: only the eventfd write.
            ulong q = (offset - NotifyOffset) / NotifyMultiplier;
            if (q < (ulong)_queues.Length) Notify((uint)q);
            return;
        }
        if (offset < CommonLength)
        {
            lock (_lock) CommonWrite((int)offset, size, value);
            return;
        }
        if (offset >= DeviceOffset && offset < DeviceOffset + (ulong)DeviceConfig.Length)
            lock (_lock) OnDeviceConfigWrite((int)(offset - DeviceOffset), size, value);
    }

    private ulong ReadDeviceConfig(int offset, int size)
    {
        if (offset + size > DeviceConfig.Length) size = DeviceConfig.Length - offset;
        lock (_lock) return Little(DeviceConfig.AsSpan(offset, size));
    }

    private static ulong Little(ReadOnlySpan<byte> b)
    {
        ulong v = 0;
        for (int i = b.Length - 1; i >= 0; i--) v = v << 8 | b[i];
        return v;
    }

    // ---- legacy (0.9.5) registers in I/O BAR 0 --------------------------------------------------------

    private int LegacyConfigBase => MsiX is { Enabled: true } ? 0x18 : 0x14;

    private ulong LegacyRead(ulong offset, int size)
    {
        int cfg = LegacyConfigBase;
        if (offset >= (ulong)cfg) return offset - (ulong)cfg < (ulong)DeviceConfig.Length ? ReadDeviceConfig((int)offset - cfg, size) : 0;
        if (offset == 0x13) return ReadIsr();
        lock (_lock)
        {
            var q = Selected;
            return offset switch
            {
                0x00 => (uint)DeviceFeatures & ~(uint)0, // the low 32 bits; VERSION_1 and up are not visible here
                0x04 => (uint)_driverFeatures,
                0x08 => q is null ? 0u : (uint)(q.Desc >> 12),
                0x0c => q?.MaxSize ?? 0u,
                0x0e => _queueSelect,
                0x12 => _status,
                0x14 => _configVector,
                0x16 => q?.MsixVector ?? Virtqueue.NoVector,
                _ => 0,
            };
        }
    }

    private void LegacyWrite(ulong offset, int size, ulong value)
    {
        int cfg = LegacyConfigBase;
        if (offset >= (ulong)cfg)
        {
            if (offset - (ulong)cfg < (ulong)DeviceConfig.Length) lock (_lock) OnDeviceConfigWrite((int)offset - cfg, size, value);
            return;
        }
        if (offset == 0x10) { Notify((uint)(ushort)value); return; }
        lock (_lock)
        {
            var q = Selected;
            switch (offset)
            {
                case 0x04:
                    _legacyDriver = true;
                    _driverFeatures = (uint)value & DeviceFeatures;
                    break;
                case 0x08 when q is not null:
                    _legacyDriver = true;
                    if ((uint)value == 0) { q.Reset(); break; }
                    q.Size = q.MaxSize;
                    q.SetLegacyPfn((uint)value);
                    q.Enabled = false;
                    EnableQueue(q);
                    break;
                case 0x0e: _queueSelect = (ushort)value; break;
                case 0x12:
                    _legacyDriver = true;
                    WriteStatus((byte)value);
                    break;
                case 0x14: _configVector = CheckVector((ushort)value); break;
                case 0x16 when q is not null: q.MsixVector = CheckVector((ushort)value); break;
            }
        }
    }

    // ---- virtio_pci_cfg_cap: BAR access through configuration space -------------------------------------

    /// <inheritdoc/>
    protected override bool OnConfigRead(int offset, int size, out uint value)
    {
        value = 0;
        if (offset < _pciCfgCap + 16 || offset >= _pciCfgCap + 20) return false;
        if (!PciCfgWindow(out ulong off, out int len)) { value = 0; return true; }
        value = (uint)ModernRead(off, len);
        return true;
    }

    /// <inheritdoc/>
    protected override bool OnConfigWrite(int offset, int size, uint value)
    {
        if (offset < _pciCfgCap + 16 || offset >= _pciCfgCap + 20) return false;
        if (PciCfgWindow(out ulong off, out int len)) ModernWrite(off, len, len == 4 ? value : value & ((1u << (len * 8)) - 1));
        return true;
    }

    private bool PciCfgWindow(out ulong offset, out int length)
    {
        offset = GetConfig32(_pciCfgCap + 8);
        length = (int)GetConfig32(_pciCfgCap + 12);
        return GetConfig8(_pciCfgCap + 4) == ModernBar && length is 1 or 2 or 4 && (offset & (ulong)(length - 1)) == 0 && offset < 0x4000;
    }

    // ---- state ------------------------------------------------------------------------------------------

    /// <summary>The transport's state and its queues' (for the snapshot layer).</summary>
    public VirtioTransportState SaveTransport()
    {
        lock (_lock)
        {
            var qs = new VirtqueueState[_queues.Length];
            for (int i = 0; i < qs.Length; i++) qs[i] = _queues[i].Save();
            return new VirtioTransportState(TransportStateVersion, _status, _driverFeatures, _deviceFeatureSelect, _driverFeatureSelect,
                _queueSelect, _configVector, _configGeneration, IsrStatus, _legacyDriver, qs);
        }
    }

    /// <summary>Restores <see cref="SaveTransport"/>'s state (after the PCI function's own).</summary>
    public void RestoreTransport(VirtioTransportState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        if (s.Version != TransportStateVersion || s.Queues.Length != _queues.Length) throw new InvalidDataException($"virtio {Where}: unsupported state");
        lock (_lock)
        {
            (_status, _driverFeatures, _deviceFeatureSelect, _driverFeatureSelect, _queueSelect, _configVector, _configGeneration, _legacyDriver) =
                (s.Status, s.DriverFeatures & DeviceFeatures, s.DeviceFeatureSelect, s.DriverFeatureSelect, s.QueueSelect, s.ConfigVector, s.ConfigGeneration, s.LegacyDriver);
            lock (Sync) _isr = s.Isr;
            for (int i = 0; i < _queues.Length; i++)
            {
                _queues[i].Restore(s.Queues[i]);
                _queues[i].EventIdx = (_driverFeatures & FeatureEventIdx) != 0;
                _queues[i].IndirectDesc = (_driverFeatures & FeatureIndirectDesc) != 0;
            }
        }
    }

    // ---- snapshot section (IDeviceState) ----------------------------------------------------------------

    /// <inheritdoc/>
    public string StateName => "virtio-pci";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <inheritdoc/>
    public void SaveState(BinaryWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var s = SaveTransport();
        writer.Write(s.Status); writer.Write(s.DriverFeatures); writer.Write(s.DeviceFeatureSelect); writer.Write(s.DriverFeatureSelect);
        writer.Write(s.QueueSelect); writer.Write(s.ConfigVector); writer.Write(s.ConfigGeneration); writer.Write(s.Isr); writer.Write(s.LegacyDriver);
        writer.Write(s.Queues.Length);
        foreach (var q in s.Queues)
        {
            writer.Write(q.Size); writer.Write(q.Enabled); writer.Write(q.Desc); writer.Write(q.Driver); writer.Write(q.Device);
            writer.Write(q.MsixVector); writer.Write(q.LastAvail); writer.Write(q.UsedIdx); writer.Write(q.ResetPending);
        }
    }

    /// <inheritdoc/>
    public void LoadState(BinaryReader reader, int version)
    {
        ArgumentNullException.ThrowIfNull(reader);
        byte status = reader.ReadByte();
        ulong drv = reader.ReadUInt64();
        uint dsel = reader.ReadUInt32(), gsel = reader.ReadUInt32();
        ushort qsel = reader.ReadUInt16(), cvec = reader.ReadUInt16();
        byte gen = reader.ReadByte(), isr = reader.ReadByte();
        bool legacy = reader.ReadBoolean();
        int n = reader.ReadInt32();
        if (n != _queues.Length) throw new InvalidDataException($"virtio {Where}: {n} queues in the snapshot, {_queues.Length} here");
        var qs = new VirtqueueState[n];
        for (int i = 0; i < n; i++)
            qs[i] = new VirtqueueState(reader.ReadUInt16(), reader.ReadBoolean(), reader.ReadUInt64(), reader.ReadUInt64(), reader.ReadUInt64(),
                reader.ReadUInt16(), reader.ReadUInt16(), reader.ReadUInt16(), reader.ReadBoolean());
        RestoreTransport(new VirtioTransportState(TransportStateVersion, status, drv, dsel, gsel, qsel, cvec, gen, (byte)(isr & 3), legacy, qs));
        // Buffers the driver made available after the device quiesced for the save are served now.
        foreach (var q in _queues) Notify((uint)q.Index);
    }

    /// <inheritdoc/>
    public void Quiesce()
    {
        // Taking the lock waits for the request being served; the flag stops new ones until Resume.
        lock (_lock)
        {
            _quiesced = true;
            OnQuiesce();
        }
    }

    /// <inheritdoc/>
    public void Resume()
    {
        lock (_lock) _quiesced = false;
        foreach (var q in _queues) Notify((uint)q.Index); // buffers made available meanwhile
    }

    /// <summary>Device hook under the lock when the device quiesces (a disk flushes).</summary>
    protected virtual void OnQuiesce() { }

    /// <summary>Stops the I/O thread; devices close their files after calling this.</summary>
    public virtual void Dispose()
    {
        lock (_doorbells)
        {
            if (Bus?.IoEventFds is { } table) foreach (var e in _doorbells) table.Remove(e);
            _doorbells.Clear();
        }
        _io?.Dispose();
        _io = null;
        GC.SuppressFinalize(this);
    }

    private sealed class ModernRegion(VirtioPciDevice d) : IMmioDevice
    {
        public ulong MmioRead(ulong offset, int size) => d.ModernRead(offset, size);
        public void MmioWrite(ulong offset, int size, ulong value) => d.ModernWrite(offset, size, value);
    }

    private sealed class LegacyRegion(VirtioPciDevice d) : IMmioDevice
    {
        public ulong MmioRead(ulong offset, int size) => d.LegacyRead(offset, size);
        public void MmioWrite(ulong offset, int size, ulong value) => d.LegacyWrite(offset, size, value);
    }
}
