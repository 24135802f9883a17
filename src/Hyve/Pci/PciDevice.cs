// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Pci;

/// <summary>
/// One PCI function with a type-0 header (bhyve's pci_devinst): 4 KiB of configuration space with per-byte write
/// masks, BARs that move when the guest reprograms them or toggles decode, a capability list with MSI and MSI-X,
/// and INTx that the bus routes to an IOAPIC pin and a PIRQ. Device models derive from it and answer their own
/// registers through <see cref="OnConfigRead"/>/<see cref="OnConfigWrite"/> and their BAR handlers.
/// </summary>
public abstract class PciDevice
{
    /// <summary>Size of the configuration space reachable through ECAM.</summary>
    public const int ConfigSize = 4096;
    /// <summary>Size of the conventional (mechanism #1) configuration space.</summary>
    public const int LegacyConfigSize = 256;

    /// <summary>Command register bit: I/O space decode.</summary>
    public const ushort CommandIo = 0x0001;
    /// <summary>Command register bit: memory space decode.</summary>
    public const ushort CommandMemory = 0x0002;
    /// <summary>Command register bit: bus master.</summary>
    public const ushort CommandBusMaster = 0x0004;
    /// <summary>Command register bit: INTx disable.</summary>
    public const ushort CommandIntxDisable = 0x0400;
    /// <summary>Status register bit: INTx status.</summary>
    public const ushort StatusIntx = 0x0008;
    /// <summary>Status register bit: capability list present.</summary>
    public const ushort StatusCapList = 0x0010;

    private readonly byte[] _cfg = new byte[ConfigSize];
    private readonly byte[] _wmask = new byte[ConfigSize];
    private readonly byte[] _w1c = new byte[ConfigSize];
    private byte[]? _initialCfg;
    private readonly PciBar?[] _bars = new PciBar?[7];
    private int _capEnd = 0x40, _lastCap, _extEnd = 0x100, _lastExt;
    private bool _intxLevel, _intxWire;
    private bool _wantsIntx;

    /// <summary>Guards INTx and MSI state against device threads racing the guest's configuration writes.</summary>
    protected readonly object Sync = new();

    internal object SyncObject => Sync;

    /// <summary>Sets up the identity registers; the header type is 0 (multifunction is added by the bus).</summary>
    protected PciDevice(ushort vendor, ushort device, byte baseClass, byte subClass, byte progIf = 0, byte revision = 0)
    {
        SetConfig16(0x00, vendor);
        SetConfig16(0x02, device);
        _cfg[0x08] = revision;
        _cfg[0x09] = progIf;
        _cfg[0x0a] = subClass;
        _cfg[0x0b] = baseClass;
        // Writable by the guest: command bits (I/O, memory, bus master, parity, SERR, INTx disable), cache line
        // size, latency timer and the interrupt line; status error bits are write-one-to-clear.
        _wmask[0x04] = 0x47;
        _wmask[0x05] = 0x05;
        _w1c[0x07] = 0xf9;
        _w1c[0x06] = 0x00;
        _wmask[0x0c] = 0xff;
        _wmask[0x0d] = 0xff;
        _wmask[0x3c] = 0xff;
    }

    /// <summary>The bus the function sits on, once added.</summary>
    public PciBus? Bus { get; private set; }
    /// <summary>Bus number.</summary>
    public int BusNumber { get; private set; }
    /// <summary>Slot (device) number 0-31.</summary>
    public int Slot { get; private set; }
    /// <summary>Function number 0-7.</summary>
    public int Function { get; private set; }
    /// <summary>Emulation name it was created as (e.g. "hostbridge").</summary>
    public string Emulation { get; internal set; } = "";
    /// <summary>Vendor ID.</summary>
    public ushort VendorId => GetConfig16(0x00);
    /// <summary>Device ID.</summary>
    public ushort DeviceId => GetConfig16(0x02);
    /// <summary>Command register.</summary>
    public ushort Command => GetConfig16(0x04);
    /// <summary>Status register.</summary>
    public ushort Status => GetConfig16(0x06);
    /// <summary>Interrupt pin register: 0 none, 1-4 INTA-INTD.</summary>
    public int InterruptPin => _cfg[0x3d];
    /// <summary>Interrupt line register (the PIRQ's ISA IRQ after routing; the guest may rewrite it).</summary>
    public int InterruptLine => _cfg[0x3c];
    /// <summary>The INTx route once the bus has routed it.</summary>
    public PciIntxRoute? IntxRoute { get; internal set; }
    /// <summary>The MSI capability, if added.</summary>
    public MsiCapability? Msi { get; private set; }
    /// <summary>The MSI-X capability, if added.</summary>
    public MsiXCapability? MsiX { get; private set; }
    /// <summary>The BARs 0-5 and the expansion ROM (index 6); unused ones are null.</summary>
    public ReadOnlySpan<PciBar?> Bars => _bars;
    /// <summary>True while the device's INTx is asserted (status bit 3), masked or not.</summary>
    public bool IntxLevel => _intxLevel;
    internal bool WantsIntx => _wantsIntx;

    // ---- configuration space -------------------------------------------------------------------------------

    /// <summary>
    /// Reads configuration space as the guest sees it. <paramref name="offset"/> must be aligned to
    /// <paramref name="size"/> (1, 2 or 4) and inside the 4 KiB space; otherwise all ones.
    /// </summary>
    public uint ReadConfig(int offset, int size)
    {
        if (!ValidAccess(offset, size)) return size >= 4 ? 0xffff_ffffu : (1u << (size * 8)) - 1;
        if (OnConfigRead(offset, size, out uint v)) return v;
        return GetConfig(offset, size);
    }

    /// <summary>Writes configuration space as the guest does: read-only bits stay, BARs and capabilities act.</summary>
    public void WriteConfig(int offset, int size, uint value)
    {
        if (!ValidAccess(offset, size)) return;
        if (OnConfigWrite(offset, size, value)) return;
        if (offset >= 0x10 && offset < 0x28)
        {
            // As bhyve: BARs are written a dword at a time; narrower writes are ignored.
            if (size == 4) WriteBar((offset - 0x10) >> 2, value);
            return;
        }
        if (offset == 0x30)
        {
            if (size == 4) WriteRom(value);
            return;
        }
        lock (Sync)
        {
            ushort oldCmd = GetConfig16(0x04);
            for (int i = 0; i < size; i++)
            {
                int o = offset + i;
                byte b = (byte)(value >> (i * 8));
                byte n = (byte)((_cfg[o] & ~_wmask[o]) | (b & _wmask[o]));
                n &= (byte)~(b & _w1c[o]);
                _cfg[o] = n;
            }
            if (offset <= 0x05 && offset + size > 0x04) CommandWritten(oldCmd);
            if (Msi is not null && Overlaps(offset, size, Msi.Offset, Msi.Length)) { Msi.ConfigWritten(); SyncIntx(); }
            if (MsiX is not null && Overlaps(offset, size, MsiX.Offset, MsiXCapability.Length)) { MsiX.ConfigWritten(); SyncIntx(); }
        }
        AfterConfigWrite(offset, size, value);
    }

    /// <summary>Device hook before the standard read; return true with <paramref name="value"/> to answer it.</summary>
    protected virtual bool OnConfigRead(int offset, int size, out uint value)
    {
        value = 0;
        return false;
    }

    /// <summary>Device hook before the standard write; return true when the device consumed it.</summary>
    protected virtual bool OnConfigWrite(int offset, int size, uint value) => false;

    /// <summary>Device hook after a standard write was applied (for registers made writable by masks).</summary>
    protected virtual void AfterConfigWrite(int offset, int size, uint value) { }

    /// <summary>Device hook for a machine reset, after configuration space went back to its power-on contents.</summary>
    protected virtual void OnReset() { }

    /// <summary>Reads raw configuration bytes (little-endian), no side effects.</summary>
    public uint GetConfig(int offset, int size) => size switch
    {
        1 => _cfg[offset],
        2 => BinaryPrimitives.ReadUInt16LittleEndian(_cfg.AsSpan(offset)),
        _ => BinaryPrimitives.ReadUInt32LittleEndian(_cfg.AsSpan(offset)),
    };

    /// <summary>Reads a raw configuration byte.</summary>
    public byte GetConfig8(int offset) => _cfg[offset];
    /// <summary>Reads a raw configuration word.</summary>
    public ushort GetConfig16(int offset) => BinaryPrimitives.ReadUInt16LittleEndian(_cfg.AsSpan(offset));
    /// <summary>Reads a raw configuration dword.</summary>
    public uint GetConfig32(int offset) => BinaryPrimitives.ReadUInt32LittleEndian(_cfg.AsSpan(offset));
    /// <summary>Sets a configuration byte (device side; read-only to the guest unless made writable).</summary>
    protected internal void SetConfig8(int offset, byte value) => _cfg[offset] = value;
    /// <summary>Sets a configuration word (device side).</summary>
    protected internal void SetConfig16(int offset, ushort value) => BinaryPrimitives.WriteUInt16LittleEndian(_cfg.AsSpan(offset), value);
    /// <summary>Sets a configuration dword (device side).</summary>
    protected internal void SetConfig32(int offset, uint value) => BinaryPrimitives.WriteUInt32LittleEndian(_cfg.AsSpan(offset), value);

    /// <summary>Makes bits of configuration bytes guest-writable (<paramref name="mask"/> per byte).</summary>
    protected internal void SetWritable(int offset, int length, byte mask)
    {
        for (int i = 0; i < length; i++) _wmask[offset + i] = mask;
    }

    /// <summary>Sets the subsystem vendor and subsystem IDs.</summary>
    protected void SetSubsystem(ushort vendor, ushort id)
    {
        SetConfig16(0x2c, vendor);
        SetConfig16(0x2e, id);
    }

    /// <summary>Overrides vendor and device IDs (conf keys <c>vendor</c>/<c>devid</c>).</summary>
    protected void SetIds(ushort vendor, ushort device)
    {
        SetConfig16(0x00, vendor);
        SetConfig16(0x02, device);
    }

    internal Span<byte> RawConfig => _cfg;

    private static bool ValidAccess(int offset, int size) =>
        (size == 1 || size == 2 || size == 4) && offset >= 0 && offset <= ConfigSize - size && (offset & (size - 1)) == 0;

    private static bool Overlaps(int a, int alen, int b, int blen) => a < b + blen && b < a + alen;

    // ---- BARs ----------------------------------------------------------------------------------------------

    /// <summary>Adds a memory BAR answered by <paramref name="handler"/> (offsets relative to the BAR base).</summary>
    public PciBar AddMemoryBar(int index, ulong size, IMmioDevice handler, bool is64 = false, bool prefetchable = false)
    {
        ArgumentNullException.ThrowIfNull(handler);
        return AddBar(index, is64 ? PciBarKind.Memory64 : PciBarKind.Memory32, Math.Max(RoundPow2(size), 4096), prefetchable, handler, null, MemProt.None);
    }

    /// <summary>Adds an I/O BAR answered by <paramref name="handler"/> (offsets relative to the BAR base).</summary>
    public PciBar AddIoBar(int index, ulong size, IMmioDevice handler)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ulong s = Math.Max(RoundPow2(size), 4);
        if (s > 256) throw new ArgumentOutOfRangeException(nameof(size), "I/O BARs are at most 256 bytes");
        return AddBar(index, PciBarKind.Io, s, false, handler, null, MemProt.None);
    }

    /// <summary>Adds a memory BAR backed by a device-memory segment mapped into the guest (a framebuffer, say).</summary>
    public PciBar AddDevMemBar(int index, MemSegment segment, bool is64 = false, bool prefetchable = true, MemProt prot = MemProt.Read | MemProt.Write)
    {
        ArgumentNullException.ThrowIfNull(segment);
        ulong s = RoundPow2(segment.Length);
        if (s != segment.Length) throw new ArgumentException("a devmem BAR segment must be a power of two long");
        return AddBar(index, is64 ? PciBarKind.Memory64 : PciBarKind.Memory32, s, prefetchable, null, segment, prot);
    }

    /// <summary>Adds the expansion ROM BAR (0x30) backed by a read-only devmem segment holding the ROM image.</summary>
    public PciBar SetExpansionRom(MemSegment segment)
    {
        ArgumentNullException.ThrowIfNull(segment);
        ulong s = Math.Max(RoundPow2(segment.Length), 2048);
        if (s != segment.Length) throw new ArgumentException("an expansion ROM segment must be a power of two long");
        if (_bars[6] is not null) throw new InvalidOperationException("expansion ROM already set");
        var bar = new PciBar(6, PciBarKind.Rom, s, false, null, segment, MemProt.Read);
        _bars[6] = bar;
        Bus?.AllocateLate(this, bar);
        return bar;
    }

    private PciBar AddBar(int index, PciBarKind kind, ulong size, bool prefetchable, IMmioDevice? handler, MemSegment? seg, MemProt prot)
    {
        if (index < 0 || index > 5 || (kind == PciBarKind.Memory64 && index > 4))
            throw new ArgumentOutOfRangeException(nameof(index));
        if (_bars[index] is not null || (kind == PciBarKind.Memory64 && _bars[index + 1] is not null) ||
            (index > 0 && _bars[index - 1]?.Kind == PciBarKind.Memory64))
            throw new InvalidOperationException($"BAR {index} is already in use");
        var bar = new PciBar(index, kind, size, prefetchable, handler, seg, prot);
        _bars[index] = bar;
        WriteBarRegisters(bar, 0);
        Bus?.AllocateLate(this, bar);
        return bar;
    }

    internal static ulong RoundPow2(ulong v)
    {
        if (v <= 1) return 1;
        return 1ul << (64 - System.Numerics.BitOperations.LeadingZeroCount(v - 1));
    }

    /// <summary>Type bits of a BAR's low register.</summary>
    private static uint TypeBits(PciBar bar) => bar.Kind switch
    {
        PciBarKind.Io => 0x1u,
        PciBarKind.Memory64 => 0x4u | (bar.Prefetchable ? 0x8u : 0),
        PciBarKind.Memory32 => bar.Prefetchable ? 0x8u : 0,
        _ => 0,
    };

    private void WriteBarRegisters(PciBar bar, ulong address)
    {
        bar.Address = address;
        if (bar.Kind == PciBarKind.Rom)
        {
            uint enable = GetConfig32(0x30) & 1;
            SetConfig32(0x30, (uint)address | enable);
            return;
        }
        int off = 0x10 + bar.Index * 4;
        SetConfig32(off, (uint)address | TypeBits(bar));
        if (bar.Kind == PciBarKind.Memory64) SetConfig32(off + 4, (uint)(address >> 32));
    }

    /// <summary>Places a BAR at <paramref name="address"/> (the bus's allocator and tests use it) and decodes it if enabled.</summary>
    internal void AssignBar(PciBar bar, ulong address)
    {
        WriteBarRegisters(bar, address);
        UpdateDecode(bar);
    }

    private void WriteBar(int reg, uint value)
    {
        // reg is 0-5. A 64-bit BAR's upper half is register reg where the bar sits at reg-1.
        PciBar? bar = _bars[reg];
        bool upper = false;
        if (bar is null && reg > 0 && _bars[reg - 1]?.Kind == PciBarKind.Memory64)
        {
            bar = _bars[reg - 1];
            upper = true;
        }
        if (bar is null) return;
        ulong mask = ~(bar.Size - 1);
        ulong addr;
        if (bar.Kind == PciBarKind.Io || bar.Kind == PciBarKind.Memory32)
            addr = value & mask & 0xffff_ffffu;
        else if (!upper)
            addr = (bar.Address & 0xffff_ffff_0000_0000ul) | (value & mask & 0xffff_ffffu);
        else
            addr = (bar.Address & 0xffff_ffffu) | (((ulong)value << 32) & mask);
        lock (Sync) WriteBarRegisters(bar, addr);
        UpdateDecode(bar);
    }

    private void WriteRom(uint value)
    {
        var bar = _bars[6];
        if (bar is null) return;
        uint addr = value & (uint)~(bar.Size - 1) & 0xffff_f800u;
        lock (Sync) SetConfig32(0x30, addr | (value & 1));
        bar.Address = addr;
        UpdateDecode(bar);
    }

    private bool DecodeEnabled(PciBar bar)
    {
        ushort cmd = GetConfig16(0x04);
        return bar.Kind switch
        {
            PciBarKind.Io => (cmd & CommandIo) != 0,
            PciBarKind.Rom => (cmd & CommandMemory) != 0 && (GetConfig32(0x30) & 1) != 0,
            _ => (cmd & CommandMemory) != 0,
        };
    }

    /// <summary>Brings a BAR's registration in line with its address and the decode enables.</summary>
    internal void UpdateDecode(PciBar bar)
    {
        var bus = Bus;
        if (bus is null) return;
        bool want = DecodeEnabled(bar) && bar.Address != 0;
        if (bar.Decoding && (!want || bar.DecodedAt != bar.Address)) bus.UnmapBar(bar);
        if (want && !bar.Decoding) bus.MapBar(this, bar, bar.Address);
        OnBarDecodeChanged(bar);
    }

    /// <summary>Device hook after a BAR's decode was brought in line (mapped, moved or unmapped: see <see cref="PciBar.Decoding"/>).</summary>
    protected virtual void OnBarDecodeChanged(PciBar bar) { }

    private void CommandWritten(ushort oldCmd)
    {
        ushort cmd = GetConfig16(0x04);
        if (((oldCmd ^ cmd) & (CommandIo | CommandMemory)) != 0)
            foreach (var bar in _bars)
                if (bar is not null) UpdateDecode(bar);
        if (((oldCmd ^ cmd) & CommandIntxDisable) != 0) SyncIntx();
    }

    // ---- capabilities -------------------------------------------------------------------------------------

    /// <summary>Adds a capability of <paramref name="length"/> bytes with ID <paramref name="id"/>; returns its offset.</summary>
    public int AddCapability(byte id, int length)
    {
        int len = (Math.Max(length, 2) + 3) & ~3;
        int off = _capEnd;
        if (off + len > LegacyConfigSize) throw new InvalidOperationException("no room for another capability");
        _cfg[off] = id;
        _cfg[off + 1] = 0;
        if (_lastCap == 0) _cfg[0x34] = (byte)off;
        else _cfg[_lastCap + 1] = (byte)off;
        _lastCap = off;
        _capEnd = off + len;
        SetConfig16(0x06, (ushort)(GetConfig16(0x06) | StatusCapList));
        return off;
    }

    /// <summary>Adds a PCI Express extended capability in the space above 256 bytes; returns its offset.</summary>
    public int AddExtendedCapability(ushort id, int version, int length)
    {
        int len = (Math.Max(length, 4) + 3) & ~3;
        int off = _extEnd;
        if (off + len > ConfigSize) throw new InvalidOperationException("no room for another extended capability");
        SetConfig32(off, id | (uint)(version & 0xf) << 16);
        if (_lastExt != 0) SetConfig32(_lastExt, GetConfig32(_lastExt) | (uint)off << 20);
        _lastExt = off;
        _extEnd = off + len;
        return off;
    }

    /// <summary>Adds an MSI capability with <paramref name="vectors"/> (1-32, power of two) messages.</summary>
    public MsiCapability AddMsi(int vectors = 1, bool is64 = true, bool perVectorMask = false)
    {
        if (Msi is not null) throw new InvalidOperationException("MSI already added");
        Msi = new MsiCapability(this, vectors, is64, perVectorMask);
        return Msi;
    }

    /// <summary>Adds an MSI-X capability with <paramref name="vectors"/> entries; table and PBA live in their own memory BAR.</summary>
    public MsiXCapability AddMsiX(int vectors, int barIndex)
    {
        if (MsiX is not null) throw new InvalidOperationException("MSI-X already added");
        MsiX = new MsiXCapability(this, vectors, barIndex);
        return MsiX;
    }

    /// <summary>Adds a PCI Express capability (version 2) of the given device/port type (0 endpoint, 4 root port, 9 root complex integrated).</summary>
    public int AddPcieCapability(int deviceType)
    {
        int off = AddCapability(0x10, 0x3c);
        SetConfig16(off + 2, (ushort)(2 | (deviceType & 0xf) << 4));
        return off;
    }

    // ---- INTx --------------------------------------------------------------------------------------------

    /// <summary>Asks for a legacy interrupt pin (bhyve's pci_lintr_request); the bus spreads INTA-INTD per slot.</summary>
    public void RequestIntx()
    {
        _wantsIntx = true;
        Bus?.AssignIntxPin(this);
    }

    /// <summary>Raises the device's INTx level (delivered unless masked by MSI/MSI-X or INTx disable).</summary>
    public void AssertIntx()
    {
        lock (Sync)
        {
            if (_intxLevel) return;
            _intxLevel = true;
            _cfg[0x06] |= (byte)StatusIntx;
            SyncIntx();
        }
    }

    /// <summary>Lowers the device's INTx level.</summary>
    public void DeassertIntx()
    {
        lock (Sync)
        {
            if (!_intxLevel) return;
            _intxLevel = false;
            _cfg[0x06] &= unchecked((byte)~StatusIntx);
            SyncIntx();
        }
    }

    /// <summary>INTx may reach the interrupt controllers: not disabled in the command register and neither MSI nor MSI-X on.</summary>
    public bool IntxPermitted =>
        (GetConfig16(0x04) & CommandIntxDisable) == 0 && !(Msi?.Enabled ?? false) && !(MsiX?.Enabled ?? false);

    /// <summary>Drives the wire to level-and-permitted (caller holds <see cref="Sync"/>).</summary>
    private void SyncIntx()
    {
        var route = IntxRoute;
        var bus = Bus;
        if (route is null || bus is null) return;
        bool want = _intxLevel && IntxPermitted;
        if (want == _intxWire) return;
        _intxWire = want;
        if (want) bus.Router.Assert(route);
        else bus.Router.Deassert(route);
    }

    internal void SetPin(int pin) => _cfg[0x3d] = (byte)pin;

    internal void Attach(PciBus bus, int busNo, int slot, int func)
    {
        Bus = bus; BusNumber = busNo; Slot = slot; Function = func;
    }

    internal void SetMultifunction(bool on)
    {
        if (on) _cfg[0x0e] |= 0x80;
        else _cfg[0x0e] &= 0x7f;
    }

    internal void CaptureInitial() => _initialCfg = (byte[])_cfg.Clone();

    // ---- state ---------------------------------------------------------------------------------------------

    /// <summary>The function's configuration space, INTx level and MSI-X table and PBA as a state section
    /// (<c>pci-config</c>); the bus adds it to the VM's inventory. A device's own state is a second section: implement
    /// <see cref="IDeviceState"/> on the device.</summary>
    public IDeviceState ConfigState => _configState ??= new ConfigSection(this);
    private ConfigSection? _configState;

    /// <summary>Runs after the configuration space was restored and the BARs re-decoded at their saved addresses: a
    /// device acts on registers that claim resources beyond its BARs here (the PIIX4 PM function's I/O block).</summary>
    protected virtual void OnRestored() { }

    private sealed class ConfigSection(PciDevice d) : IDeviceState
    {
        public string StateName => "pci-config";
        public int StateVersion => 1;
        public int OldestStateVersion => 1;

        public void SaveState(BinaryWriter w)
        {
            lock (d.Sync)
            {
                w.Write(d._cfg);
                w.Write(d._intxLevel);
                byte[] table = d.MsiX?.SaveTable() ?? [], pba = d.MsiX?.SavePending() ?? [];
                w.Write(table.Length); w.Write(table);
                w.Write(pba.Length); w.Write(pba);
            }
        }

        public void LoadState(BinaryReader r, int version)
        {
            var cfg = r.ReadBytes(ConfigSize);
            if (cfg.Length != ConfigSize) throw new EndOfStreamException();
            // Identity and read-only registers come from the device built here: a snapshot of another device at this
            // address is refused rather than loaded over it.
            if (BinaryPrimitives.ReadUInt32LittleEndian(cfg) != d.GetConfig32(0))
                throw new InvalidDataException($"PCI function {d.BusNumber}:{d.Slot}.{d.Function} was " +
                    $"{BinaryPrimitives.ReadUInt16LittleEndian(cfg):x4}:{BinaryPrimitives.ReadUInt16LittleEndian(cfg.AsSpan(2)):x4}, " +
                    $"is {d.VendorId:x4}:{d.DeviceId:x4}");
            bool intx = r.ReadBoolean();
            var table = ReadBlob(r, d.MsiX?.SaveTable().Length ?? 0);
            var pba = ReadBlob(r, d.MsiX?.SavePending().Length ?? 0);
            lock (d.Sync)
            {
                cfg.CopyTo(d._cfg, 0);
                d.MsiX?.Restore(table, pba);
                d._intxLevel = intx;
            }
            d.ReloadFromConfig();
            d.OnRestored();
        }

        private static byte[] ReadBlob(BinaryReader r, int expected)
        {
            int n = r.ReadInt32();
            if (n != expected) throw new InvalidDataException($"MSI-X state of {n} bytes where the device has {expected}");
            var b = r.ReadBytes(n);
            return b.Length == n ? b : throw new EndOfStreamException();
        }
    }

    /// <summary>Puts configuration space back to how the bus left it at build time (a machine reset).</summary>
    public void Reset()
    {
        lock (Sync)
        {
            if (_initialCfg is not null) _initialCfg.CopyTo(_cfg, 0);
            MsiX?.Restore(null, null);
            _intxLevel = false;
        }
        ReloadFromConfig();
        OnReset();
    }

    private void ReloadFromConfig()
    {
        foreach (var bar in _bars)
        {
            if (bar is null) continue;
            if (bar.Kind == PciBarKind.Rom) bar.Address = GetConfig32(0x30) & 0xffff_f800u & (uint)~(bar.Size - 1);
            else
            {
                int off = 0x10 + bar.Index * 4;
                ulong a = GetConfig32(off) & ~(bar.Size - 1) & 0xffff_ffffu;
                if (bar.Kind == PciBarKind.Memory64) a |= (ulong)GetConfig32(off + 4) << 32;
                bar.Address = a;
            }
            UpdateDecode(bar);
        }
        lock (Sync)
        {
            Msi?.ConfigWritten();
            SyncIntx();
        }
    }
}
