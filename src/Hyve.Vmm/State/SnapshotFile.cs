// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Hyve.Vmm.State;

/// <summary>A snapshot file that cannot be used: the message names what is wrong, in one line.</summary>
public sealed class SnapshotFormatException(string message) : Exception(message);

/// <summary>
/// The fixed header at the start of a snapshot file, readable without the rest (512 bytes, little-endian):
/// <code>
///   0  char[8]  "HYVESNAP"            96 u64  CPU feature fingerprint
///   8  u16      format major          104 u64 manifest offset
///  10  u16      format minor          112 u64 manifest length
///  12  u32      header length (512)   120 u32 manifest CRC-32C
///  16  char[32] Hyve version          124 u32 header CRC-32C (of these 512 bytes with this field 0)
///  48  char[16] architecture ("x86_64")
///  64  char[16] engine taken on ("soft", "kvm")
///  80  char[16] CPU vendor
/// </code>
/// A reader refuses a newer major version; minor versions only add (manifest keys, sections with their own versions).
/// </summary>
public sealed record SnapshotHeader(int Major, int Minor, string HyveVersion, string Arch, string Engine, string CpuVendor,
    ulong CpuFingerprint, long ManifestOffset, long ManifestLength, uint ManifestCrc)
{
    /// <summary>The magic at offset 0.</summary>
    public const string Magic = "HYVESNAP";
    /// <summary>Bytes the header takes.</summary>
    public const int Size = 512;
    /// <summary>The format major version this Hyve writes and the newest it reads.</summary>
    public const int CurrentMajor = 1;
    /// <summary>The format minor version this Hyve writes (1: the manifest's <c>disks</c> and <c>guest_cpuid</c>).</summary>
    public const int CurrentMinor = 1;
    /// <summary>The only architecture there is so far.</summary>
    public const string ThisArch = "x86_64";

    /// <summary>The 512 header bytes.</summary>
    public byte[] Encode()
    {
        var b = new byte[Size];
        Encoding.ASCII.GetBytes(Magic).CopyTo(b, 0);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), (ushort)Major);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(10), (ushort)Minor);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), Size);
        Put(b, 16, 32, HyveVersion);
        Put(b, 48, 16, Arch);
        Put(b, 64, 16, Engine);
        Put(b, 80, 16, CpuVendor);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(96), CpuFingerprint);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(104), ManifestOffset);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(112), ManifestLength);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(120), ManifestCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(124), Crc32C.Compute(b));
        return b;
    }

    /// <summary>Reads and checks a header: magic, checksum, format major and architecture.</summary>
    public static SnapshotHeader Decode(ReadOnlySpan<byte> b)
    {
        if (b.Length < Size) throw new SnapshotFormatException("truncated: shorter than the snapshot header");
        if (Encoding.ASCII.GetString(b[..8]) != Magic) throw new SnapshotFormatException("not a Hyve snapshot (bad magic)");
        var copy = b[..Size].ToArray();
        uint crc = BinaryPrimitives.ReadUInt32LittleEndian(copy.AsSpan(124));
        BinaryPrimitives.WriteUInt32LittleEndian(copy.AsSpan(124), 0);
        int major = BinaryPrimitives.ReadUInt16LittleEndian(b[8..]), minor = BinaryPrimitives.ReadUInt16LittleEndian(b[10..]);
        // A newer major may have moved the checksum: name the version, not a corruption.
        if (major > CurrentMajor)
            throw new SnapshotFormatException($"format version {major}.{minor} is newer than this Hyve reads ({CurrentMajor}.x)");
        if (Crc32C.Compute(copy) != crc) throw new SnapshotFormatException("header checksum mismatch (the file is corrupt)");
        if (major < 1) throw new SnapshotFormatException($"format version {major}.{minor} is not a released format");
        var h = new SnapshotHeader(major, minor, Get(b, 16, 32), Get(b, 48, 16), Get(b, 64, 16), Get(b, 80, 16),
            BinaryPrimitives.ReadUInt64LittleEndian(b[96..]), BinaryPrimitives.ReadInt64LittleEndian(b[104..]),
            BinaryPrimitives.ReadInt64LittleEndian(b[112..]), BinaryPrimitives.ReadUInt32LittleEndian(b[120..]));
        if (h.Arch != ThisArch) throw new SnapshotFormatException($"snapshot is for architecture {h.Arch}; this Hyve runs {ThisArch}");
        return h;
    }

    private static void Put(byte[] b, int at, int len, string s)
    {
        var bytes = Encoding.ASCII.GetBytes(s);
        bytes.AsSpan(0, Math.Min(len - 1, bytes.Length)).CopyTo(b.AsSpan(at));
    }

    private static string Get(ReadOnlySpan<byte> b, int at, int len)
    {
        var f = b.Slice(at, len);
        int end = f.IndexOf((byte)0);
        return Encoding.ASCII.GetString(end < 0 ? f : f[..end]);
    }
}

/// <summary>One entry of the section table.</summary>
public sealed record SectionEntry(string Name, string Instance, int Version, int Oldest, long Offset, long Length, uint Crc32C);

/// <summary>A disk as it was when the snapshot was taken: what a restore compares with the disk it opens.</summary>
/// <param name="Device">The device's config node ("pci.0.3.0").</param>
/// <param name="Path">The disk's path then (it may be re-pointed at a restore).</param>
/// <param name="Size">Its size in bytes.</param>
/// <param name="Sample">SHA-256 of sampled blocks (see Hyve.Snapshot.DiskIdentity), lower-case hex.</param>
public sealed record DiskEntry(string Device, string Path, long Size, string Sample);

/// <summary>A memory segment's contents in the file: page-aligned, zero pages left as holes.</summary>
public sealed record SegmentEntry(int Id, string Name, bool SysMem, ulong Length, long Offset);

/// <summary>A guest-physical range: where (part of) a segment is mapped.</summary>
public sealed record RangeEntry(ulong Gpa, ulong Length, int Segment, ulong SegmentOffset, int Prot);

/// <summary>
/// The manifest: JSON after the sections, describing the whole snapshot (what <c>hyvectl --describe-snapshot</c> prints):
/// the VM's name, when and where it was taken, the whole configuration tree, the section table and the memory layout.
/// </summary>
public sealed class SnapshotManifest
{
    /// <summary>The VM's name when taken.</summary>
    public string Vm { get; set; } = "";
    /// <summary>UTC time of the checkpoint (ISO 8601).</summary>
    public string Created { get; set; } = "";
    /// <summary>Hyve version that wrote it.</summary>
    public string Hyve { get; set; } = "";
    /// <summary>Engine it was taken on.</summary>
    public string Engine { get; set; } = "";
    /// <summary>Number of vCPUs.</summary>
    public int Cpus { get; set; }
    /// <summary>The configuration tree, flattened to dotted keys.</summary>
    public List<KeyValuePair<string, string>> Config { get; } = [];
    /// <summary>The section table.</summary>
    public List<SectionEntry> Sections { get; } = [];
    /// <summary>Memory segments.</summary>
    public List<SegmentEntry> Segments { get; } = [];
    /// <summary>Guest-physical ranges.</summary>
    public List<RangeEntry> Ranges { get; } = [];
    /// <summary>The disks' identities (format 1.1; empty in older files).</summary>
    public List<DiskEntry> Disks { get; } = [];
    /// <summary>CPUID feature words the guest saw, by name ("1.ecx", "7.0.ebx", ...), in hex (format 1.1; empty in older files).</summary>
    public List<KeyValuePair<string, string>> GuestCpuid { get; } = [];

    /// <summary>The manifest as indented JSON (UTF-8).</summary>
    public byte[] ToJson()
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("vm", Vm);
            w.WriteString("created", Created);
            w.WriteString("hyve", Hyve);
            w.WriteString("engine", Engine);
            w.WriteNumber("cpus", Cpus);
            w.WriteStartObject("config");
            foreach (var (k, v) in Config) w.WriteString(k, v);
            w.WriteEndObject();
            w.WriteStartArray("sections");
            foreach (var s in Sections)
            {
                w.WriteStartObject();
                w.WriteString("name", s.Name);
                w.WriteString("instance", s.Instance);
                w.WriteNumber("version", s.Version);
                w.WriteNumber("oldest", s.Oldest);
                w.WriteNumber("offset", s.Offset);
                w.WriteNumber("length", s.Length);
                w.WriteString("crc32c", s.Crc32C.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("segments");
            foreach (var s in Segments)
            {
                w.WriteStartObject();
                w.WriteNumber("id", s.Id);
                w.WriteString("name", s.Name);
                w.WriteBoolean("sysmem", s.SysMem);
                w.WriteNumber("length", s.Length);
                w.WriteNumber("offset", s.Offset);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("ranges");
            foreach (var r in Ranges)
            {
                w.WriteStartObject();
                w.WriteString("gpa", $"0x{r.Gpa:x}");
                w.WriteNumber("length", r.Length);
                w.WriteNumber("segment", r.Segment);
                w.WriteNumber("segment_offset", r.SegmentOffset);
                w.WriteNumber("prot", r.Prot);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("disks");
            foreach (var d in Disks)
            {
                w.WriteStartObject();
                w.WriteString("device", d.Device);
                w.WriteString("path", d.Path);
                w.WriteNumber("size", d.Size);
                w.WriteString("sample_sha256", d.Sample);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("guest_cpuid");
            foreach (var (k, v) in GuestCpuid) w.WriteString(k, v);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    /// <summary>Parses a manifest; anything missing or of the wrong type is a <see cref="SnapshotFormatException"/>.</summary>
    public static SnapshotManifest Parse(ReadOnlySpan<byte> json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.ToArray());
            var root = doc.RootElement;
            var m = new SnapshotManifest
            {
                Vm = root.GetProperty("vm").GetString() ?? "",
                Created = root.GetProperty("created").GetString() ?? "",
                Hyve = root.GetProperty("hyve").GetString() ?? "",
                Engine = root.GetProperty("engine").GetString() ?? "",
                Cpus = root.GetProperty("cpus").GetInt32(),
            };
            foreach (var p in root.GetProperty("config").EnumerateObject())
                m.Config.Add(new(p.Name, p.Value.GetString() ?? throw new SnapshotFormatException($"manifest: config key {p.Name} is not a string")));
            foreach (var s in root.GetProperty("sections").EnumerateArray())
                m.Sections.Add(new SectionEntry(Str(s, "name"), Str(s, "instance"), s.GetProperty("version").GetInt32(),
                    s.GetProperty("oldest").GetInt32(), s.GetProperty("offset").GetInt64(), s.GetProperty("length").GetInt64(),
                    uint.Parse(Str(s, "crc32c"), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture)));
            foreach (var s in root.GetProperty("segments").EnumerateArray())
                m.Segments.Add(new SegmentEntry(s.GetProperty("id").GetInt32(), Str(s, "name"), s.GetProperty("sysmem").GetBoolean(),
                    s.GetProperty("length").GetUInt64(), s.GetProperty("offset").GetInt64()));
            foreach (var r in root.GetProperty("ranges").EnumerateArray())
            {
                string gpa = Str(r, "gpa");
                if (!gpa.StartsWith("0x", StringComparison.Ordinal)) throw new SnapshotFormatException($"manifest: range address {gpa} is not hex");
                m.Ranges.Add(new RangeEntry(ulong.Parse(gpa.AsSpan(2), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture),
                    r.GetProperty("length").GetUInt64(), r.GetProperty("segment").GetInt32(), r.GetProperty("segment_offset").GetUInt64(),
                    r.GetProperty("prot").GetInt32()));
            }
            if (root.TryGetProperty("disks", out var disks))
                foreach (var d in disks.EnumerateArray())
                    m.Disks.Add(new DiskEntry(Str(d, "device"), Str(d, "path"), d.GetProperty("size").GetInt64(), Str(d, "sample_sha256")));
            if (root.TryGetProperty("guest_cpuid", out var cpuid))
                foreach (var p in cpuid.EnumerateObject())
                    m.GuestCpuid.Add(new(p.Name, p.Value.GetString() ?? throw new SnapshotFormatException($"manifest: guest_cpuid {p.Name} is not a string")));
            return m;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or OverflowException)
        {
            throw new SnapshotFormatException($"manifest is malformed: {e.Message.Split('\n')[0]}");
        }
    }

    private static string Str(JsonElement e, string name) => e.GetProperty(name).GetString() ?? throw new SnapshotFormatException($"manifest: {name} is null");

    /// <summary>The value of config key <paramref name="key"/>, or null.</summary>
    public string? Get(string key)
    {
        foreach (var (k, v) in Config) if (k == key) return v;
        return null;
    }
}

/// <summary>
/// An open snapshot file, checked before anything is built from it: header, manifest, every section's bounds and
/// checksum, every segment's bounds and page alignment. Guest RAM is not checksummed (a restore maps it rather than
/// reading it).
/// </summary>
public sealed class SnapshotReader : IDisposable
{
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _file;

    private SnapshotReader(string path, Microsoft.Win32.SafeHandles.SafeFileHandle file, SnapshotHeader header, SnapshotManifest manifest, long length)
    {
        Path = path; _file = file; Header = header; Manifest = manifest; Length = length;
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }
    /// <summary>The header.</summary>
    public SnapshotHeader Header { get; }
    /// <summary>The manifest.</summary>
    public SnapshotManifest Manifest { get; }
    /// <summary>The file's length.</summary>
    public long Length { get; }
    /// <summary>The open file (for mapping guest RAM).</summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle File => _file;

    /// <summary>Reads only the header and manifest (for describing a file); checks their checksums.</summary>
    public static SnapshotReader Open(string path, bool checkSections = true)
    {
        Microsoft.Win32.SafeHandles.SafeFileHandle file;
        try
        {
            file = System.IO.File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new SnapshotFormatException($"cannot open {path}: {e.Message}");
        }
        try
        {
            long length = RandomAccess.GetLength(file);
            var hb = new byte[SnapshotHeader.Size];
            int got = RandomAccess.Read(file, hb, 0);
            var header = SnapshotHeader.Decode(hb.AsSpan(0, got));
            if (header.ManifestOffset < SnapshotHeader.Size || header.ManifestLength <= 0 || header.ManifestLength > 64 << 20
                || header.ManifestOffset > length - header.ManifestLength)
                throw new SnapshotFormatException("truncated: the manifest lies beyond the end of the file");
            var mb = new byte[header.ManifestLength];
            if (RandomAccess.Read(file, mb, header.ManifestOffset) != mb.Length) throw new SnapshotFormatException("truncated manifest");
            if (Crc32C.Compute(mb) != header.ManifestCrc) throw new SnapshotFormatException("manifest checksum mismatch (the file is corrupt)");
            var manifest = SnapshotManifest.Parse(mb);
            var r = new SnapshotReader(path, file, header, manifest, length);
            if (checkSections) r.Check();
            return r;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private void Check()
    {
        foreach (var s in Manifest.Sections)
        {
            if (s.Offset < 0 || s.Length < 0 || s.Offset > Length - s.Length)
                throw new SnapshotFormatException($"truncated: section {s.Name}/{s.Instance} lies beyond the end of the file");
            if (Crc32C.Compute(ReadRaw(s)) != s.Crc32C)
                throw new SnapshotFormatException($"section {s.Name}/{s.Instance} checksum mismatch (the file is corrupt)");
        }
        foreach (var g in Manifest.Segments)
        {
            if (((ulong)g.Offset & 0xfff) != 0 || (g.Length & 0xfff) != 0 || g.Length == 0 || g.Length > GuestMemory.MaxSize)
                throw new SnapshotFormatException($"memory segment {g.Name} is not page-aligned");
            if (g.Offset < 0 || (ulong)g.Offset > (ulong)Length || g.Length > (ulong)(Length - g.Offset))
                throw new SnapshotFormatException($"truncated: memory segment {g.Name} lies beyond the end of the file");
        }
        foreach (var r in Manifest.Ranges)
        {
            var seg = Manifest.Segments.Find(g => g.Id == r.Segment)
                ?? throw new SnapshotFormatException($"memory range at 0x{r.Gpa:x} names segment {r.Segment}, which the file lacks");
            if (r.SegmentOffset > seg.Length || r.Length > seg.Length - r.SegmentOffset)
                throw new SnapshotFormatException($"memory range at 0x{r.Gpa:x} exceeds segment {seg.Name}");
        }
    }

    private byte[] ReadRaw(SectionEntry s)
    {
        var b = new byte[s.Length];
        if (RandomAccess.Read(_file, b, s.Offset) != b.Length) throw new SnapshotFormatException($"truncated section {s.Name}/{s.Instance}");
        return b;
    }

    /// <summary>Every section with its payload (already checksummed by <see cref="Open"/>).</summary>
    public List<StateSection> ReadSections()
    {
        var list = new List<StateSection>();
        foreach (var s in Manifest.Sections) list.Add(new StateSection(s.Name, s.Instance, s.Version, s.Oldest, ReadRaw(s)));
        return list;
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _file.Dispose();
}
