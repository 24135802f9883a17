// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Vmm.State;
using Xunit;

namespace Hyve.Tests.Snapshot;

/// <summary>The snapshot file's header, manifest and checks, and what a restore says about a file it cannot use.</summary>
public class SnapshotFileTests
{
    private static SnapshotHeader Header() => new(1, 0, "hyve test", "x86_64", "soft", "GenuineIntel", 0x1234, 8192, 100, 0xabcd);

    [Fact]
    public void The_header_round_trips_and_its_fields_sit_where_the_format_says()
    {
        var b = Header().Encode();
        Assert.Equal(512, b.Length);
        Assert.Equal("HYVESNAP", Encoding.ASCII.GetString(b, 0, 8));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(8)));
        Assert.Equal("x86_64", Encoding.ASCII.GetString(b, 48, 6));
        Assert.Equal("soft", Encoding.ASCII.GetString(b, 64, 4));
        Assert.Equal(8192, BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(104)));
        Assert.Equal(Header(), SnapshotHeader.Decode(b));
    }

    private static string Refusal(byte[] b)
    {
        var e = Assert.Throws<SnapshotFormatException>(() => SnapshotHeader.Decode(b));
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    private static void Reseal(byte[] b)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(124), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(124), Crc32C.Compute(b));
    }

    [Fact]
    public void A_truncated_flipped_foreign_or_newer_header_is_refused_naming_why()
    {
        Assert.Contains("truncated", Refusal(Header().Encode()[..100]));
        var b = Header().Encode();
        b[0] = (byte)'X';
        Assert.Contains("not a Hyve snapshot", Refusal(b));
        b = Header().Encode();
        b[97] ^= 0x10;
        Assert.Contains("checksum", Refusal(b));
        b = Header().Encode();
        Encoding.ASCII.GetBytes("aarch64\0").CopyTo(b, 48);
        Reseal(b);
        Assert.Contains("architecture aarch64", Refusal(b));
        b = Header().Encode();
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), 2);
        Reseal(b);
        Assert.Contains("format version 2.0 is newer", Refusal(b));
        // A newer minor version only adds: it loads.
        b = Header().Encode();
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(10), 7);
        Reseal(b);
        Assert.Equal(7, SnapshotHeader.Decode(b).Minor);
    }

    [Fact]
    public void The_manifest_round_trips_and_a_broken_one_is_refused()
    {
        var m = new SnapshotManifest { Vm = "v", Created = "now", Hyve = "h", Engine = "kvm", Cpus = 2 };
        m.Config.Add(new("memory.size", "512M"));
        m.Sections.Add(new SectionEntry("vatpic", "0", 1, 1, 4096, 117, 0xdeadbeef));
        m.Segments.Add(new SegmentEntry(0, "sysmem", true, 1 << 20, 8192));
        m.Ranges.Add(new RangeEntry(0x1_0000_0000, 4096, 0, 0, 7));
        var back = SnapshotManifest.Parse(m.ToJson());
        Assert.Equal(m.ToJson(), back.ToJson());
        Assert.Equal("512M", back.Get("memory.size"));
        Assert.Equal(0x1_0000_0000ul, back.Ranges[0].Gpa);
        Assert.Contains("malformed", Assert.Throws<SnapshotFormatException>(() => SnapshotManifest.Parse("{\"vm\": 3}"u8)).Message);
        Assert.Contains("malformed", Assert.Throws<SnapshotFormatException>(() => SnapshotManifest.Parse(m.ToJson().AsSpan(0, 40))).Message);
    }
}

/// <summary>hyve -r with files it must refuse: one line, status 4, nothing started.</summary>
public class SnapshotRefusalTests
{
    internal static (string Dir, string File, string Name) TakeSnapshot()
    {
        string rom = GuestRom.ToFile(SnapshotRomTests.CounterRom());
        string name = "s" + Guid.NewGuid().ToString("N")[..10];
        string dir = Directory.CreateTempSubdirectory("hyve-snap").FullName;
        string file = Path.Combine(dir, "good.hyvesnap");
        using var p = HyveProcess.Start("-o", "accel=soft", "-m", "64M", "-l", $"bootrom,{rom}", "-l", "com1,stdio", name);
        p.WaitForSocket(name);
        p.WaitForOutput("c=0002\n");
        var c = p.Ctl($"--vm={name}", $"--suspend={file}");
        Assert.True(c.Status == 0, c.Err);
        p.WaitForExit(30);
        return (dir, file, name);
    }

    internal static void AssertRefused(string[] args, string expected)
    {
        using var p = HyveProcess.Run(["-o", "accel=soft", .. args]);
        Assert.True(p.ExitCode == 4, $"status {p.ExitCode}: {p.Stderr}");
        Assert.Equal("", p.Stdout);
        var lines = p.Stderr.TrimEnd('\n').Split('\n');
        Assert.True(lines.Length == 1, p.Stderr);
        Assert.Contains(expected, lines[0], StringComparison.Ordinal);
    }

    [Fact]
    public void Malformed_snapshots_and_disagreeing_options_are_refused_with_one_line_and_status_4()
    {
        var (dir, file, name) = TakeSnapshot();
        var good = File.ReadAllBytes(file);
        var manifest = SnapshotReaderManifest(file);
        string Variant(string n, Action<byte[]> edit, int length = -1)
        {
            var b = length < 0 ? (byte[])good.Clone() : good[..length];
            edit(b);
            string path = Path.Combine(dir, n);
            File.WriteAllBytes(path, b);
            return path;
        }

        AssertRefused(["-r", Variant("truncated", _ => { }, good.Length / 2), name], "truncated");
        AssertRefused(["-r", Variant("short", _ => { }, 300), name], "truncated");
        var vatpit = manifest.Sections.Find(s => s.Name == "vatpit")!;
        AssertRefused(["-r", Variant("flipped", b => b[vatpit.Offset + 3] ^= 4), name], "section vatpit/0 checksum mismatch");
        AssertRefused(["-r", Variant("flipped-header", b => b[100] ^= 1), name], "header checksum mismatch");
        AssertRefused(["-r", Variant("flipped-manifest", b => b[manifestOffset(b) + 20] ^= 1), name], "manifest checksum mismatch");
        AssertRefused(["-r", Variant("arch", b => { Encoding.ASCII.GetBytes("riscv64\0").CopyTo(b, 48); Reseal(b); }), name], "architecture riscv64");
        AssertRefused(["-r", Variant("major", b => { BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), 9); BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(10), 0); Reseal(b); }), name], "format version 9.0 is newer");
        AssertRefused(["-r", Path.Combine(dir, "absent"), name], "cannot open");
        // Options must agree with the snapshot's configuration; the reply names every key that does not.
        AssertRefused(["-r", file, "-m", "128M", "-c", "2", name], "on cpus, memory.size");
        // A value given explicitly is compared even when it is the default (256M; strictmsr true, which -w clears).
        AssertRefused(["-r", file, "-m", "256M", name], "on memory.size");
        AssertRefused(["-r", file, "-w", name], "on x86.strictmsr");
        // The guest saw CPU features this engine lacks (as if taken on a host with AVX-512): refused, naming them.
        AssertRefused(["-r", WithManifest(good, Path.Combine(dir, "cpuid"), m =>
        {
            int i = m.GuestCpuid.FindIndex(kv => kv.Key == "7.0.ebx");
            uint v = uint.Parse(m.GuestCpuid[i].Value, System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
            m.GuestCpuid[i] = new("7.0.ebx", (v | 1u << 16 | 1u << 30).ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
        }), name], "lacks: avx512f avx512bw");
        Directory.Delete(dir, true);
    }

    // The options a restore runs with: the snapshot's configuration plus what the command line re-points.
    [Fact]
    public void Options_equal_to_the_snapshot_in_another_spelling_agree_and_repointed_paths_are_taken()
    {
        var (dir, file, name) = TakeSnapshot();
        using (var r = SnapshotReader.Open(file))
        {
            var merged = Hyve.Snapshot.MachineSnapshots.MergeOptions(Hyve.Config.Options.Parse(["-r", file, "-m", "64", "-l", "com1,/tmp/x.log", name]), r);
            Assert.Equal("/tmp/x.log", merged.Config.Get("lpc.com1.path"));
            Assert.Equal(64ul << 20, merged.MemorySize);
            // Nothing given but the file: the snapshot's values, defaults included, stand.
            merged = Hyve.Snapshot.MachineSnapshots.MergeOptions(Hyve.Config.Options.Parse(["-r", file]), r);
            Assert.Equal(name, merged.Config.Get("name"));
            Assert.Equal("64M", merged.Config.Get("memory.size"));
            var e = Assert.Throws<Hyve.HostConfigException>(() =>
                Hyve.Snapshot.MachineSnapshots.MergeOptions(Hyve.Config.Options.Parse(["-r", file, "-o", "lpc.fwcfg=bhyve", "-m", "256M", name]), r));
            Assert.EndsWith("on memory.size", e.Message, StringComparison.Ordinal); // fwcfg=bhyve is the snapshot's too
        }
        Directory.Delete(dir, true);
    }

    // Writes a copy of a snapshot whose manifest was edited (the manifest is the file's tail), resealed.
    internal static string WithManifest(byte[] good, string path, Action<SnapshotManifest> edit)
    {
        long at = BinaryPrimitives.ReadInt64LittleEndian(good.AsSpan(104)), len = BinaryPrimitives.ReadInt64LittleEndian(good.AsSpan(112));
        var m = SnapshotManifest.Parse(good.AsSpan((int)at, (int)len));
        edit(m);
        var json = m.ToJson();
        var b = new byte[at + json.Length];
        good.AsSpan(0, (int)at).CopyTo(b);
        json.CopyTo(b, at);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(112), json.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(120), Crc32C.Compute(json));
        Reseal(b);
        File.WriteAllBytes(path, b);
        return path;
    }

    private static long manifestOffset(byte[] b) => BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(104));

    private static SnapshotManifest SnapshotReaderManifest(string file)
    {
        using var r = SnapshotReader.Open(file);
        return r.Manifest;
    }

    internal static void Reseal(byte[] b)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(124), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(124), Crc32C.Compute(b.AsSpan(0, 512)));
    }
}
