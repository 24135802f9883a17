// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Xunit;

namespace Hyve.Tests.Config;

/// <summary>
/// issue 17 item 7: every option <c>-h</c> lists, and every device name <c>-l help</c> and <c>-s help</c> print, either
/// does what it says or is refused. The table below says which, and where the effect is tested; an option added to
/// the usage text without a row here fails <see cref="EveryOptionInTheHelpIsClassified"/>.
/// </summary>
public class OptionAuditTests
{
    // Letter -> null when refused at parse time, else where its effect is checked.
    private static readonly Dictionary<char, string?> Effects = new()
    {
        ['a'] = "xAPIC mode at start (the default it names; -x is the other): Vlapic tests",
        ['A'] = "ACPI tables are always built: AcpiTablesTests, BiosTablesTests",
        ['C'] = "memory.guest_in_core: GuestMemory's MADV_DONTDUMP choice (Machine)",
        ['c'] = "topology: OptionsTests, HyvectlLiveTests",
        ['D'] = "hyve's VM always ends with its process at power-off: HyveExitStatusTests",
        ['e'] = "x86.strictio: HardeningTests.StrictIoStopsAtAnUnclaimedAccess",
        ['f'] = "fw_cfg user files: FwCfgTests",
        ['G'] = "debug server: GdbProtocolTests",
        ['H'] = "the vCPU thread sleeps on HLT on both engines: Vm halt tests",
        ['h'] = "help: this test",
        ['k'] = "config file: OptionsTests",
        ['K'] = "keyboard.layout: the VNC console's key map (vnc branch tests)",
        ['l'] = "LPC devices: OptionsTests, Uart tests, DebugExitTests",
        ['m'] = "memory size: OptionsTests, SMBIOS/E820 tests",
        ['o'] = "config keys: OptionsTests",
        ['P'] = null,
        ['p'] = "vCPU pinning: Vm.Pinning (sched_setaffinity)",
        ['r'] = "snapshot restore: the snapshot branch's tests",
        ['S'] = null,
        ['s'] = "PCI slots: PciDeviceTests",
        ['U'] = "SMBIOS UUID: SmbiosTablesTests",
        ['u'] = "RTC in UTC: VrtcTests / Machine",
        ['W'] = "virtio_msix=false: VirtioPciDevice offers MSI instead of MSI-X (virtio branch tests)",
        ['w'] = "x86.strictmsr: HardeningTests.StrictMsrAndMinusW",
        ['x'] = "x86.x2apic: InProcessVmTests.With_minus_x_every_local_apic_starts_in_x2apic_mode, OptionsTests",
        ['Y'] = "x86.mptable=false: BiosTablesTests.Without_the_mp_table_an_os_scan_finds_no_mp_floating_pointer",
    };

    private static IEnumerable<char> HelpLetters()
    {
        foreach (var line in Options.Usage().Split('\n'))
        {
            var t = line.TrimStart();
            if (t.Length >= 3 && t[0] == '-' && t[2] == ':') yield return t[1];
        }
    }

    private static string[] Invocation(char letter) => letter switch
    {
        'c' => ["-c", "2"],
        'f' => ["-f", "opt/x,string=y"],
        'G' => ["-G", "1234"],
        'k' => ["-k", ConfigFile()],
        'K' => ["-K", "us"],
        'l' => ["-l", "com1,stdio"],
        'm' => ["-m", "512M"],
        'o' => ["-o", "x86.strictio=true"],
        'p' => ["-p", "0:0"],
        'r' => ["-r", "/tmp/snapshot"],
        's' => ["-s", "0,hostbridge"],
        'U' => ["-U", "0badcafe-1234-4321-8765-0123456789ab"],
        _ => ["-" + letter],
    };

    private static string ConfigFile()
    {
        string f = Path.Combine(Path.GetTempPath(), $"hyve-audit-{Guid.NewGuid():N}.conf");
        File.WriteAllText(f, "x86.strictio=true\n");
        return f;
    }

    [Fact]
    public void EveryOptionInTheHelpIsClassified()
    {
        var letters = HelpLetters().ToList();
        Assert.True(letters.Count >= 20, $"the usage text lists only {letters.Count} options");
        foreach (var c in letters) Assert.True(Effects.ContainsKey(c), $"-{c} is in the help but not classified here");
    }

    [Fact]
    public void EveryOptionInTheHelpHasAnEffectOrIsRefused()
    {
        var baseline = Options.Parse(["vm"]).Config.Dump();
        foreach (var c in HelpLetters())
        {
            var r = Options.Parse([.. Invocation(c), "vm"]);
            if (Effects[c] is null)
            {
                Assert.NotNull(r.Error);
                Assert.Contains("not implemented", r.Error, StringComparison.Ordinal);
                continue;
            }
            Assert.True(r.Error is null, $"-{c}: {r.Error}");
            if (c == 'h') { Assert.NotNull(r.HelpText); continue; }
            if (c is 'a' or 'A' or 'D' or 'H') continue; // their meaning is the machine's fixed behaviour (see the table)
            Assert.True(baseline != r.Config.Dump(), $"-{c} changed no configuration key");
        }
    }

    // The same keys set through -o are refused too: no route accepts them and ignores them.
    [Theory]
    [InlineData("x86.vmexit_on_pause=true")]
    [InlineData("memory.wired=true")]
    public void UnimplementedKeysAreRefusedThroughMinusOToo(string kv)
        => Assert.Contains("not implemented", Options.Parse(["-o", kv, "vm"]).Error ?? "", StringComparison.Ordinal);

    // soft.jit and soft.jit_cache (issue 15): a bad value ends hyve at parse time; good ones reach the machine's keys.
    [Theory]
    [InlineData("soft.jit=maybe", "invalid boolean")]
    [InlineData("soft.jit_cache=12K", "outside 1M..4G")]
    [InlineData("soft.jit_cache=lots", "invalid size")]
    public void TranslatorKeysAreChecked(string kv, string error)
        => Assert.Contains(error, Options.Parse(["-o", kv, "vm"]).Error ?? "", StringComparison.Ordinal);

    [Fact]
    public void TranslatorKeysAreAccepted()
    {
        var r = Options.Parse(["-o", "soft.jit=true", "-o", "soft.jit_cache=16M", "vm"]);
        Assert.Null(r.Error);
        Assert.True(r.Config.GetBool("soft.jit", false));
        Assert.Equal(16ul << 20, r.Config.GetSize("soft.jit_cache", 0));
    }

    [Fact]
    public void EveryLpcDeviceIsImplementedOrRefused()
    {
        foreach (var dev in LpcOption.KnownDevices)
        {
            string arg = dev switch
            {
                "bootrom" => "bootrom,/tmp/rom",
                "fwcfg" => "fwcfg,qemu",
                "tpm" => "tpm,swtpm,/tmp/tpm",
                "debug-exit" => "debug-exit",
                "pc-testdev" => "pc-testdev",
                _ => dev + ",stdio",
            };
            var r = Options.Parse(["-l", arg, "vm"]);
            if (dev is "pc-testdev" or "tpm") Assert.Contains("not implemented", r.Error ?? "", StringComparison.Ordinal);
            else Assert.True(r.Error is null, $"-l {arg}: {r.Error}");
        }
    }

    // -s: every name in the device-type table is either built (listed by -s help, with a factory) or ends hyve at
    // start-up with one line and status 4, never a silent empty slot.
    [Fact]
    public void EveryPciDeviceNameIsImplementedOrRefused()
    {
        var help = PciSlotOption.KnownDevices;
        string rom = GuestRom.ToFile(GuestRom.RealMode(a => { a.cli(); a.hlt(); }));
        int refused = 0;
        foreach (var t in Hyve.Pci.PciDeviceTypes.All)
        {
            if (t.Implemented)
            {
                Assert.Contains(t.Name, help);
                Assert.NotNull(t.Factory);
                continue;
            }
            Assert.DoesNotContain(t.Name, help);
            refused++;
            using var p = HyveProcess.Run("-o", "accel=soft", "-s", $"3,{t.Name}", "-l", $"bootrom,{rom}", "audit" + Guid.NewGuid().ToString("N")[..6]);
            Assert.True(p.ExitCode == 4, $"-s 3,{t.Name} ran (status {p.ExitCode}) though nothing implements it");
            Assert.Contains("does not implement", p.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", p.Stderr, StringComparison.Ordinal);
        }
        Assert.True(help.Count + refused == Hyve.Pci.PciDeviceTypes.All.Count);
    }
}
