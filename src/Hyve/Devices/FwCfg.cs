// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Vmm;
using Hyve.Vmm.State;

namespace Hyve.Devices;

/// <summary>
/// QEMU's firmware configuration device as bhyve's <c>-l fwcfg,qemu</c> provides it (QEMU docs/specs/fw_cfg.rst):
/// a 16-bit selector at 0x510, a byte-wide data port at 0x511 that walks the selected item, and the DMA interface
/// at 0x514 (big-endian 64-bit address of an FWCfgDmaAccess; writing the low half starts the transfer). Items are
/// blobs by selector; named files get selectors from 0x20 and appear in the file directory (0x19).
/// The guest's DMA descriptor and buffers are checked against guest RAM before anything is copied.
/// </summary>
public sealed class FwCfg : IPortDevice, IDeviceState
{
    /// <summary>Selector port.</summary>
    public const ushort SelectorPort = 0x510;
    /// <summary>Data port.</summary>
    public const ushort DataPort = 0x511;
    /// <summary>DMA address port (8 bytes: high half at 0x514, low half at 0x518).</summary>
    public const ushort DmaPort = 0x514;

    /// <summary>Signature item ("QEMU").</summary>
    public const ushort Signature = 0x0000;
    /// <summary>Feature bitmap item (bit 0 traditional interface, bit 1 DMA).</summary>
    public const ushort Id = 0x0001;
    /// <summary>UUID item.</summary>
    public const ushort Uuid = 0x0002;
    /// <summary>RAM size item (le64).</summary>
    public const ushort RamSize = 0x0003;
    /// <summary>No-graphics flag item (le16).</summary>
    public const ushort NoGraphic = 0x0004;
    /// <summary>Boot CPU count item (le16).</summary>
    public const ushort NbCpus = 0x0005;
    /// <summary>Boot menu item (le16).</summary>
    public const ushort BootMenu = 0x000e;
    /// <summary>Maximum CPU count item (le16).</summary>
    public const ushort MaxCpus = 0x000f;
    /// <summary>File directory item.</summary>
    public const ushort FileDir = 0x0019;
    /// <summary>First selector given to named files.</summary>
    public const ushort FirstFile = 0x0020;
    /// <summary>Longest file name (the directory holds 56 bytes with the terminating NUL).</summary>
    public const int MaxNameLength = 55;

    /// <summary>DMA control: error.</summary>
    public const uint DmaError = 0x01;
    /// <summary>DMA control: read.</summary>
    public const uint DmaRead = 0x02;
    /// <summary>DMA control: skip.</summary>
    public const uint DmaSkip = 0x04;
    /// <summary>DMA control: select (selector in bits 31:16).</summary>
    public const uint DmaSelect = 0x08;
    /// <summary>DMA control: write (not supported: reported as an error).</summary>
    public const uint DmaWrite = 0x10;

    private const ushort WriteChannel = 0x4000;
    private const int MaxFiles = WriteChannel - FirstFile;
    private const int DmaChunk = 1 << 20;
    private static readonly byte[] DmaSignature = "QEMU CFG"u8.ToArray();

    private readonly GuestMemory _memory;
    private readonly Dictionary<ushort, byte[]> _items = [];
    private readonly List<(string Name, ushort Selector)> _files = [];
    private readonly object _gate = new();
    private ushort _selector;
    private byte[]? _current;
    private uint _offset;
    private ulong _dmaAddress;

    /// <summary>Creates the device with its signature, feature bits and an empty file directory.</summary>
    public FwCfg(GuestMemory memory)
    {
        _memory = memory ?? throw new ArgumentNullException(nameof(memory));
        SetItem(Signature, "QEMU"u8.ToArray());
        SetItem(Id, Le32(0x3));
        RebuildDirectory();
    }

    /// <summary>Claims 0x510-0x511 and 0x514-0x51B on <paramref name="ports"/>.</summary>
    public void Register(PortBus ports)
    {
        ports.Register(SelectorPort, 2, this);
        ports.Register(DmaPort, 8, this);
    }

    /// <summary>Sets the item at <paramref name="selector"/> (below 0x20 or arch-local 0x8000+).</summary>
    public void SetItem(ushort selector, byte[] data)
    {
        ArgumentNullException.ThrowIfNull(data);
        lock (_gate)
        {
            _items[(ushort)(selector & ~WriteChannel)] = data;
            if ((selector & ~WriteChannel) == _selector) _current = data;
        }
    }

    /// <summary>Sets the RAM size item.</summary>
    public void SetRamSize(ulong bytes) => SetItem(RamSize, Le64(bytes));

    /// <summary>Sets the CPU count items (NB_CPUS and MAX_CPUS).</summary>
    public void SetCpus(int bootCpus, int maxCpus)
    {
        SetItem(NbCpus, Le16((ushort)bootCpus));
        SetItem(MaxCpus, Le16((ushort)maxCpus));
    }

    /// <summary>Adds or replaces a named file and returns its selector. Names are at most 55 bytes.</summary>
    public ushort AddFile(string name, byte[] data)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (string.IsNullOrEmpty(name) || Encoding.UTF8.GetByteCount(name) > MaxNameLength || name.Contains('\0'))
            throw new HostConfigException($"fw_cfg file name '{name}' must be 1-{MaxNameLength} bytes");
        lock (_gate)
        {
            foreach (var f in _files)
                if (f.Name == name) { SetItem(f.Selector, data); RebuildDirectory(); return f.Selector; }
            if (_files.Count >= MaxFiles) throw new HostConfigException("too many fw_cfg files");
            ushort sel = (ushort)(FirstFile + _files.Count);
            _files.Add((name, sel));
            SetItem(sel, data);
            RebuildDirectory();
            return sel;
        }
    }

    /// <summary>Names and selectors of the files, in selector order.</summary>
    public IReadOnlyList<(string Name, ushort Selector)> Files
    {
        get { lock (_gate) return _files.ToArray(); }
    }

    /// <summary>The data of a file by name, or null.</summary>
    public byte[]? GetFile(string name)
    {
        lock (_gate)
            foreach (var f in _files)
                if (f.Name == name) return _items[f.Selector];
        return null;
    }

    /// <summary>Adds a user item from bhyve's <c>-f name,string=text</c> or <c>-f name,file=path</c>.</summary>
    public ushort AddUserItem(string spec)
    {
        var (name, data) = FwCfgItems.ParseUserItem(spec);
        return AddFile(name, data);
    }

    private void RebuildDirectory()
    {
        var dir = new byte[4 + 64 * _files.Count];
        BinaryPrimitives.WriteUInt32BigEndian(dir, (uint)_files.Count);
        for (int i = 0; i < _files.Count; i++)
        {
            var e = dir.AsSpan(4 + 64 * i, 64);
            BinaryPrimitives.WriteUInt32BigEndian(e, (uint)_items[_files[i].Selector].Length);
            BinaryPrimitives.WriteUInt16BigEndian(e[4..], _files[i].Selector);
            Encoding.UTF8.GetBytes(_files[i].Name, e[8..]);
        }
        SetItem(FileDir, dir);
    }

    // ---- guest interface ---------------------------------------------------------------------------------

    /// <inheritdoc/>
    public uint PortRead(ushort port, int size)
    {
        lock (_gate)
        {
            if (port == DataPort)
            {
                uint v = 0;
                for (int i = 0; i < size; i++) v |= (uint)NextByte() << (i * 8);
                return v;
            }
            if (port >= DmaPort && port < DmaPort + 8)
            {
                uint v = 0;
                for (int i = 0; i < size && port - DmaPort + i < 8; i++) v |= (uint)DmaSignature[port - DmaPort + i] << (i * 8);
                return v;
            }
            // The selector port is write-only.
            return 0xffff_ffffu;
        }
    }

    /// <inheritdoc/>
    public void PortWrite(ushort port, int size, uint value)
    {
        lock (_gate)
        {
            if (port == SelectorPort)
            {
                if (size >= 2) Select((ushort)value);
                return;
            }
            if (size != 4) return;
            if (port == DmaPort)
                _dmaAddress = (_dmaAddress & 0xffff_ffffu) | (ulong)BinaryPrimitives.ReverseEndianness(value) << 32;
            else if (port == DmaPort + 4)
            {
                _dmaAddress = (_dmaAddress & 0xffff_ffff_0000_0000ul) | BinaryPrimitives.ReverseEndianness(value);
                ulong a = _dmaAddress;
                _dmaAddress = 0;
                DoDma(a);
            }
            // Writes to the data port are ignored, as in QEMU since 2.4.
        }
    }

    private void Select(ushort key)
    {
        _selector = (ushort)(key & ~WriteChannel);
        _current = _items.GetValueOrDefault(_selector);
        _offset = 0;
    }

    private byte NextByte()
    {
        var cur = _current;
        if (cur is null || _offset >= cur.Length) return 0;
        return cur[_offset++];
    }

    private void DoDma(ulong descriptor)
    {
        // The descriptor itself must be in guest RAM; if it is not there is nowhere to report the error.
        if (!_memory.TryGetSpan(descriptor, 16, MemProt.Read | MemProt.Write, out var desc)) return;
        uint control = BinaryPrimitives.ReadUInt32BigEndian(desc);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(desc[4..]);
        ulong address = BinaryPrimitives.ReadUInt64BigEndian(desc[8..]);
        if ((control & DmaSelect) != 0) Select((ushort)(control >> 16));
        bool read = (control & DmaRead) != 0;
        bool write = !read && (control & DmaWrite) != 0;
        bool skip = !read && !write && (control & DmaSkip) != 0;
        uint result = 0;
        if (write) result = DmaError;
        else if (read || skip)
        {
            if (read && !GuestRangeWritable(address, length)) result = DmaError;
            else
            {
                var cur = _current;
                ulong avail = cur is null || _offset >= cur.Length ? 0 : (ulong)(cur.Length - _offset);
                ulong n = Math.Min(avail, length);
                if (read)
                {
                    Copy(address, cur, (int)_offset, n);
                    // Past the end of the item the guest reads zeros.
                    Zero(address + n, length - n);
                }
                _offset += (uint)n;
            }
        }
        // Re-fetch: the guest range could have covered the descriptor.
        if (_memory.TryGetSpan(descriptor, 4, MemProt.Write, out var ctl))
            BinaryPrimitives.WriteUInt32BigEndian(ctl, result);
    }

    private bool GuestRangeWritable(ulong gpa, ulong length)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, DmaChunk);
            if (gpa + (ulong)n < gpa || !_memory.TryGetSpan(gpa, n, MemProt.Write, out _)) return false;
            gpa += (ulong)n;
            length -= (ulong)n;
        }
        return true;
    }

    private void Copy(ulong gpa, byte[]? src, int srcOffset, ulong length)
    {
        while (length > 0 && src is not null)
        {
            int n = (int)Math.Min(length, DmaChunk);
            if (!_memory.TryGetSpan(gpa, n, MemProt.Write, out var dst)) return;
            src.AsSpan(srcOffset, n).CopyTo(dst);
            srcOffset += n; gpa += (ulong)n; length -= (ulong)n;
        }
    }

    private void Zero(ulong gpa, ulong length)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, DmaChunk);
            if (!_memory.TryGetSpan(gpa, n, MemProt.Write, out var dst)) return;
            dst.Clear();
            gpa += (ulong)n; length -= (ulong)n;
        }
    }

    // ---- state ---------------------------------------------------------------------------------------------

    /// <inheritdoc/>
    public string StateName => "fw-cfg";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <summary>Writes the guest-visible latches: selector, read offset and DMA address (items are host configuration,
    /// rebuilt from the config tree on restore).</summary>
    public void SaveState(BinaryWriter w)
    {
        lock (_gate)
        {
            w.Write(_selector);
            w.Write(_offset);
            w.Write(_dmaAddress);
        }
    }

    /// <summary>Reads what <see cref="SaveState"/> wrote.</summary>
    public void LoadState(BinaryReader r, int version)
    {
        ushort selector = r.ReadUInt16();
        uint offset = r.ReadUInt32();
        ulong dma = r.ReadUInt64();
        lock (_gate)
        {
            Select(selector);
            _offset = offset;
            _dmaAddress = dma;
        }
    }

    /// <summary>Machine reset: nothing selected, no DMA address latched.</summary>
    public void Reset()
    {
        lock (_gate)
        {
            Select(Signature);
            _dmaAddress = 0;
        }
    }

    internal static byte[] Le16(ushort v) { var b = new byte[2]; BinaryPrimitives.WriteUInt16LittleEndian(b, v); return b; }
    internal static byte[] Le32(uint v) { var b = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); return b; }
    internal static byte[] Le64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); return b; }
}
