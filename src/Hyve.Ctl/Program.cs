// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Ctl;

/// <summary>The hyvectl executable's entry point.</summary>
public static class Program
{
    /// <summary>Runs hyvectl with bhyvectl(8)'s command line.</summary>
    public static int Main(string[] args) => CtlMain.Run(args, Console.Out, Console.Error);
}
