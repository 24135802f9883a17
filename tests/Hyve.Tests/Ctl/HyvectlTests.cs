// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Ctl;
using Hyve.Vmm.Control;
using Hyve.X86;

using Xunit;

namespace Hyve.Tests.Ctl;

/// <summary>hyvectl against a control server backed by a fake VM: bhyvectl's output formats, exactly.</summary>
public sealed class HyvectlTests : IDisposable
{
    private readonly string _dir = Path.Combine("/tmp", "hyvectl-test-" + Guid.NewGuid().ToString("N")[..8]);
    private readonly FakeVm _vm = new("guest");
    private readonly ControlServer _server;

    public HyvectlTests() => _server = ControlServer.Start(_vm, _dir);

    public void Dispose()
    {
        _server.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = CtlMain.Run(args, o, e, _dir);
        return (code, o.ToString(), e.ToString());
    }

    private string Ok(params string[] args)
    {
        var (code, o, e) = Run(args);
        Assert.True(code == 0, $"exit {code}: {e}");
        Assert.Equal("", e);
        return o;
    }

    [Fact]
    public void CpuTopology() =>
        Assert.Equal("cpu_topology:\tsockets=2, cores=2, threads=1, maxcpus=4\n", Ok("--vm=guest", "--get-cpu-topology"));

    [Fact]
    public void ActiveAndSuspendedCpus()
    {
        Assert.Equal("active cpus:\t 0, 1\n", Ok("--vm=guest", "--get-active-cpus"));
        Assert.Equal("suspended cpus:\t (none)\n", Ok("--vm=guest", "--get-suspended-cpus"));
        _vm.Suspended.AddRange([3, 1]);
        Assert.Equal("suspended cpus:\t 1, 3\n", Ok("--vm", "guest", "--get-suspended-cpus"));
    }

    [Fact]
    public void RegistersInBhyvectlFormat()
    {
        Assert.Equal("rip[0]\t\t0x000000000000fff0\n", Ok("--vm=guest", "--get-rip"));
        Assert.Equal("rflags[0]\t0x0000000000000002\n", Ok("--vm=guest", "--get-rflags"));
        Assert.Equal("cr0[2]\t\t0x0000000060000010\n", Ok("--vm=guest", "--cpu=2", "--get-cr0"));
        Assert.Equal("r15[0]\t\t0x0000000000000000\n", Ok("--vm=guest", "--get-r15"));
        // Several options print in bhyvectl's fixed order, not command-line order.
        Assert.Equal("rip[0]\t\t0x000000000000fff0\nrdx[0]\t\t0x0000000000000600\n",
            Ok("--vm=guest", "--get-rdx", "--get-rip"));
    }

    [Fact]
    public void SegmentsAndDescriptors()
    {
        Assert.Equal("cs[0]\t\t0xf000\n", Ok("--vm=guest", "--get-cs"));
        Assert.Equal("cs desc[0]\t0x00000000ffff0000/0x0000ffff/0x0000009b\n", Ok("--vm=guest", "--get-desc-cs"));
        Assert.Equal("ldtr desc[1]\t0x0000000000000000/0x0000ffff/0x00000082\n", Ok("--vm=guest", "--cpu=1", "--get-desc-ldtr"));
        Assert.Equal("gdtr[0]\t\t0x0000000000000000/0x0000ffff\n", Ok("--vm=guest", "--get-desc-gdtr"));
        Assert.Equal("idtr[0]\t\t0x0000000000000000/0x0000ffff\n", Ok("--vm=guest", "--get-desc-idtr"));
    }

    [Fact]
    public void MemsegAndMemmap()
    {
        Assert.Equal(
            "ID  Length      Name\n" +
            "0   256MB       sysmem\n" +
            "1   2048KB      bootrom\n",
            Ok("--vm=guest", "--get-memseg"));
        Assert.Equal(
            "Address     Length      Segment     Offset      Prot  Flags\n" +
            "0           256MB       sysmem      0           RWX   \n" +
            "FFE00000    2048KB      bootrom     0           R-X   \n",
            Ok("--vm=guest", "--get-memmap"));
    }

    [Fact]
    public void SetRipRoundTrip()
    {
        Assert.Equal("rip[1]\t\t0x0000000000001000\n", Ok("--vm=guest", "--cpu=1", "--set-rip=0x1000", "--get-rip"));
        Assert.Equal(0x1000UL, _vm.GetRegister(1, Reg.Rip));
        Assert.Equal(0xfff0UL, _vm.GetRegister(0, Reg.Rip));
        // strtoul base 0: leading 0 is octal, plain digits decimal, minus wraps.
        Ok("--vm=guest", "--set-rax=010", "--set-rsp=10", "--set-cr3", "-1");
        Assert.Equal(8UL, _vm.GetRegister(0, Reg.Rax));
        Assert.Equal(10UL, _vm.GetRegister(0, Reg.Rsp));
        Assert.Equal(ulong.MaxValue, _vm.GetRegister(0, Reg.Cr3));
    }

    [Fact]
    public void SetSelectorAndDescriptor()
    {
        Ok("--vm=guest", "--set-ds=0x10", "--set-desc-ds", "--desc-base=0x1000", "--desc-limit=0xfffff", "--desc-access=0xc093");
        Assert.Equal(0x10UL, _vm.GetRegister(0, Reg.Ds));
        Assert.Equal(new SegmentDescriptor(0x1000, 0xfffff, 0xc093), _vm.GetDescriptor(0, Reg.Ds));
        // bhyvectl passes access 0 for the descriptor tables.
        Ok("--vm=guest", "--set-desc-gdtr", "--desc-base=0x5000", "--desc-limit=0x27", "--desc-access=0x93");
        Assert.Equal(new SegmentDescriptor(0x5000, 0x27, 0), _vm.GetDescriptor(0, Reg.Gdtr));
    }

    [Fact]
    public void ForcePoweroffAndReset()
    {
        Assert.Equal("", Ok("--vm=guest", "--force-poweroff"));
        Assert.Equal([SuspendHow.PowerOff], _vm.Suspends);
        Ok("--vm=guest", "--force-reset");
        Assert.Equal([SuspendHow.PowerOff, SuspendHow.Reset], _vm.Suspends);
    }

    [Fact]
    public void MissingVmIsNotCreated()
    {
        var (code, o, _) = Run("--vm=nosuch", "--get-rip");
        Assert.Equal(1, code);
        Assert.Equal("VM:nosuch is not created.\n", o);
    }

    [Fact]
    public void BadVcpuGivesErrnoAndServerKeepsServing()
    {
        var (code, o, e) = Run("--vm=guest", "--cpu=9", "--get-rip");
        Assert.Equal(1, code);
        Assert.Equal("errno = 22\n", o);
        Assert.Contains("vcpu 9 does not exist", e);
        Assert.Equal("rip[0]\t\t0x000000000000fff0\n", Ok("--vm=guest", "--get-rip"));
    }

    [Fact]
    public void UsageAndHelp()
    {
        var (code, o, e) = Run("--vm=guest", "--get-bogus");
        Assert.Equal(1, code);
        Assert.Equal("", o);
        Assert.StartsWith("hyvectl: unrecognized option '--get-bogus'\nUsage: hyvectl --vm=<vmname>\n", e);
        Assert.Contains("       [--set-rip=<RIP>]\n", e);

        (code, _, e) = Run("--get-rip");
        Assert.Equal(1, code);
        Assert.Contains("--vm is required", e);

        (code, _, e) = Run("--vm=guest", "--get-r1");
        Assert.Equal(1, code);
        Assert.Contains("ambiguous", e);

        (code, _, e) = Run("--vm=guest", "--set-rip=zz");
        Assert.Equal(1, code);
        Assert.Contains("invalid value 'zz' for --set-rip", e);

        (code, o, _) = Run("--help");
        Assert.Equal(0, code);
        Assert.StartsWith("Usage: hyvectl --vm=<vmname>\n       [--cpu=<vcpu_number>]\n", o);
        Assert.Equal(0, Run("-h").Code);
    }

    [Fact]
    public void UniquePrefixIsAccepted() =>
        Assert.Equal("cpu_topology:\tsockets=2, cores=2, threads=1, maxcpus=4\n", Ok("--vm=guest", "--get-cpu-t"));

    [Fact]
    public void GetAllPrintsEverythingInBhyvectlOrder()
    {
        string o = Ok("--vm=guest", "--get-all");
        string expected =
            "ID  Length      Name\n0   256MB       sysmem\n1   2048KB      bootrom\n" +
            "Address     Length      Segment     Offset      Prot  Flags\n" +
            "0           256MB       sysmem      0           RWX   \n" +
            "FFE00000    2048KB      bootrom     0           R-X   \n" +
            "efer[0]\t\t0x0000000000000000\n" +
            "cr0[0]\t\t0x0000000060000010\n" +
            "cr2[0]\t\t0x0000000000000000\n" +
            "cr3[0]\t\t0x0000000000000000\n" +
            "cr4[0]\t\t0x0000000000000000\n" +
            "dr0[0]\t\t0x0000000000000000\n" +
            "dr1[0]\t\t0x0000000000000000\n" +
            "dr2[0]\t\t0x0000000000000000\n" +
            "dr3[0]\t\t0x0000000000000000\n" +
            "dr6[0]\t\t0x00000000ffff0ff0\n" +
            "dr7[0]\t\t0x0000000000000400\n" +
            "rsp[0]\t\t0x0000000000000000\n" +
            "rip[0]\t\t0x000000000000fff0\n" +
            "rax[0]\t\t0x0000000000000000\n" +
            "rbx[0]\t\t0x0000000000000000\n" +
            "rcx[0]\t\t0x0000000000000000\n" +
            "rdx[0]\t\t0x0000000000000600\n" +
            "rsi[0]\t\t0x0000000000000000\n" +
            "rdi[0]\t\t0x0000000000000000\n" +
            "rbp[0]\t\t0x0000000000000000\n" +
            "r8[0]\t\t0x0000000000000000\n" +
            "r9[0]\t\t0x0000000000000000\n" +
            "r10[0]\t\t0x0000000000000000\n" +
            "r11[0]\t\t0x0000000000000000\n" +
            "r12[0]\t\t0x0000000000000000\n" +
            "r13[0]\t\t0x0000000000000000\n" +
            "r14[0]\t\t0x0000000000000000\n" +
            "r15[0]\t\t0x0000000000000000\n" +
            "rflags[0]\t0x0000000000000002\n" +
            "ds desc[0]\t0x0000000000000000/0x0000ffff/0x00000093\n" +
            "es desc[0]\t0x0000000000000000/0x0000ffff/0x00000093\n" +
            "fs desc[0]\t0x0000000000000000/0x0000ffff/0x00000093\n" +
            "gs desc[0]\t0x0000000000000000/0x0000ffff/0x00000093\n" +
            "ss desc[0]\t0x0000000000000000/0x0000ffff/0x00000093\n" +
            "cs desc[0]\t0x00000000ffff0000/0x0000ffff/0x0000009b\n" +
            "tr desc[0]\t0x0000000000000000/0x0000ffff/0x0000008b\n" +
            "ldtr desc[0]\t0x0000000000000000/0x0000ffff/0x00000082\n" +
            "gdtr[0]\t\t0x0000000000000000/0x0000ffff\n" +
            "idtr[0]\t\t0x0000000000000000/0x0000ffff\n" +
            "cs[0]\t\t0xf000\n" +
            "ds[0]\t\t0x0000\n" +
            "es[0]\t\t0x0000\n" +
            "fs[0]\t\t0x0000\n" +
            "gs[0]\t\t0x0000\n" +
            "ss[0]\t\t0x0000\n" +
            "tr[0]\t\t0x0000\n" +
            "ldtr[0]\t\t0x0000\n" +
            "rtc nvram[000]: 0x00\n" +
            "rtc time 0x6925a850: Tue Nov 25 13:00:00 2025\n" +
            "pending:\tn/a\n" +
            "current:\tn/a\n" +
            "active cpus:\t 0, 1\n" +
            "suspended cpus:\t (none)\n" +
            "cpu_topology:\tsockets=2, cores=2, threads=1, maxcpus=4\n";
        Assert.Equal(expected, o);
    }
}
